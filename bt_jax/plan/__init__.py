"""Plan a pod run without a pod: compile the trainer's programs for compile-only TPU devices
(libtpu, on any CPU) or this machine's own devices, and report memory per chip, FLOPs,
bytes, collectives and a roofline estimate of the step.

  python -m bt_jax.plan --config configs/imagenet.py --topology v5e:4x4 --out DIR

`planner.make_plan` is the library entry; `compile.compile_run` compiles the programs of
the trainer's own assembly (`train.setup.assemble`), `hlo` reads the collectives of the
compiled HLO, `report` gives the estimate and writes plan.json / plan.md, `chips` holds the
published chip figures.
"""
