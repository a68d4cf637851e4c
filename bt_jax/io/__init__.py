"""Every read and write of a run's files, in one package:

- storage.py: the one filesystem layer (local paths, gs://, s3:// through etils.epath);
- run_dir.py: a run's paths and atomic writes; run_lock.py: one writer per workdir;
- checkpoint.py: Orbax checkpoints; export.py: backbone.msgpack and its record;
- interop.py: torchvision names <-> bt_jax variables (public as `bt_jax.interop`);
- weights.py: weights files of any format (.pth, .safetensors, .msgpack), read and written.

This file imports nothing: `bt_jax.models` reads its files through `bt_jax.io.storage`
while `bt_jax.io.export` builds models, and neither may pull in the other by accident.
"""
