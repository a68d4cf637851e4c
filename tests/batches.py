"""The trainer's input stream from a run config, for tests: `pipeline.train_batches` with
the settings `train.loop` passes it."""
from bt_jax.data import pipeline
from bt_jax.data.layout import batch_layout
from bt_jax.data.views import view_configs


def config_batches(config, source, **kwargs):
    """pipeline.train_batches(source, ...) in the layout and with the views, seed, batch
    and shuffle buffer of `config`; kwargs: start_step, process_index, process_count,
    stats."""
    layout = batch_layout(config.data.augment_on, source.gather_on_host)
    return pipeline.train_batches(source, layout, view_configs(config.data),
                                  seed=config.seed, global_batch=config.batch_size,
                                  shuffle_buffer=config.data.shuffle_buffer, **kwargs)
