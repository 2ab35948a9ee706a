"""The package's training loops: the galaxy VAE (:func:`train_vae`) and the shared loop of
the simulation-trained models (:func:`train_on_stream`: RIM, lens CNN, ratio estimator),
with checkpoints that resume, progress and ``tf.distribute``.

#### Distribution

Every trainer takes a ``strategy`` and all of them get it from one factory,
:func:`make_strategy` (the ``--strategy`` option of every ``train-*`` command):

* ``"default"``: the current strategy (one device);
* ``"mirrored"``: ``tf.distribute.MirroredStrategy``, all local devices;
* ``"multiworker"``: :class:`MultiWorkerStrategy`, a ``MultiWorkerMirroredStrategy``
  (synchronous data parallelism; all-reduce by NCCL on GPUs, by a ring on CPUs) over the
  cluster that the ``TF_CONFIG`` environment variable describes. Every worker runs the
  same command; worker 0 (or the ``chief`` task, if any) is the chief.

Under several workers each global batch (``batch_size`` examples, a multiple of the
number of replicas) is built identically on every worker and split between the replicas
(``tf.data`` DATA auto-sharding): replica ``r`` of ``R`` trains on rows ``[r B/R, (r+1)
B/R)``, the gradients are summed across replicas, and a step is the same step as on one
device with the whole batch, up to float rounding, for a model whose ``train_step``
divides its loss by the number of replicas (Keras' compiled losses do; the package's
models call :func:`~tfstronglens.models.replicas.scale_loss_for_replicas`). The VAE draws its
reparameterisation noise per replica from one seed, so all replicas draw the same noise
rows: its multi-worker steps equal those of one worker with as many local replicas, not
those of a single replica (the same in distribution). The data pipeline is therefore *not*
divided (each worker simulates or reads the whole global batch); the network's forward
and backward passes are. Only the chief writes checkpoints, ``state.json``, the final
model and the report; the other workers save their model copies to temporary
directories that are deleted at once (a save may read synchronised variables, which is a
collective operation, so every worker takes part), and return only ``{"chief": False,
...}``. Resuming is as on one device: when a worker is killed, restart all of them with
the same command; each reads the chief's checkpoint, so ``out_dir`` must be on storage
that every worker sees (a shared file system), which is checked at start (the workers
compare the step they resume from).

#### TPUs and accelerators

``TPUStrategy`` (not offered by :func:`make_strategy`: it needs a TPU cluster resolver)
would run the same code path as ``MultiWorkerStrategy``: ``model.fit`` on a
``tf.data`` stream whose batches have a static shape (``drop_remainder=True``; the
simulated streams' batches are fixed-size), the models' ``train_step`` (a loss with no
Python control flow on tensor values, gradients, ``optimizer.apply_gradients``), and
``jit_compile=True`` (``compile(jit_compile=True)``; the ``jit_compile`` arguments of
the trainers), which XLA-compiles the per-replica step as a TPU requires. (XLA has no
collective operations on CPUs: ``jit_compile=True`` under several CPU workers is refused
with a ``ValueError``; the tests therefore cannot compile a multi-worker step, and check
instead that every trainer's batches have static shapes.) The lens
physics the streams simulate runs in ``tf.function(jit_compile=True)`` already. **No
TPU or GPU run of any trainer has ever been made**: only CPUs (one process, and two
worker processes on one machine in ``tests/test_multiworker.py``).
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import numbers
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from ..io._atomic import atomic_output
from .vae import VAE

__all__ = ["train_vae", "load_galaxy_dataset", "within_noise_threshold", "STATE_FILE",
           "CHECKPOINT_DIR", "is_checkpoint_dir", "train_on_stream", "read_stream_state",
           "LEARNING_RATE_SCHEDULES", "save_trained_model", "write_json", "STRATEGIES",
           "MultiWorkerStrategy", "make_strategy", "is_chief", "num_workers"]

#: Subdirectory of ``out_dir`` that holds the epoch checkpoints and the resume state.
CHECKPOINT_DIR = "checkpoint"
#: The resume state file inside :data:`CHECKPOINT_DIR`.
STATE_FILE = "state.json"
_COMMAND = "tfstronglens.models.train_vae"
_GALAXY_DATASETS = ("synthetic_galaxies", "cosmos_galaxies")
# The settings of train_vae that are options of `tfstronglens train-vae` (same name).
_CLI_OPTIONS = ("latent_dim", "base_filters", "max_filters", "batch_size", "learning_rate",
                "kl_warmup_steps", "beta", "seed")
_CACHE_BYTES = 2 * 1024**3  # cache the decoded training set in memory below this size


def within_noise_threshold(num_pixels: int) -> float:
    r"""The chi^2-per-pixel bound below which a reconstruction is "within the noise".

    For a perfect model, ``chi2/Npix = (1/Npix) sum_p ((x_p - m_p)/sigma)^2`` has mean 1
    and standard deviation ``sqrt(2 / Npix)`` (a chi^2 with ``Npix`` degrees of freedom
    over ``Npix``); the bound is the 3-sigma upper limit ``1 + 3 sqrt(2 / Npix)``.
    """
    return 1.0 + 3.0 * math.sqrt(2.0 / float(num_pixels))


def is_checkpoint_dir(out_dir) -> bool:
    """True when ``out_dir`` holds a resumable checkpoint written by :func:`train_vae`."""
    state = _read_state(os.fspath(out_dir))
    return state is not None


def _read_state(out_dir):
    return read_stream_state(out_dir, _COMMAND)


def _read_report(out_dir):
    try:
        with open(os.path.join(out_dir, "report.json")) as fh:
            report = json.load(fh)
    except (OSError, json.JSONDecodeError):
        return None
    return report if isinstance(report, dict) else None


def save_trained_model(model, out_dir, filename: str, strategy=None) -> str:
    """The final outputs of a training run: ``out_dir/filename`` (the Keras model, written
    atomically) and ``out_dir/saved_model/`` (``model.export``). Returns the model path.

    On a worker that is not the chief of ``strategy`` (:func:`is_chief`) the same files go
    to a temporary directory that is then deleted: every worker of a multi-worker run
    must call this, and only the chief's files remain."""
    path = os.path.join(os.fspath(out_dir), filename)
    if not is_chief(strategy):
        with _worker_scratch() as scratch:
            model.save(os.path.join(scratch, filename), overwrite=True)
            model.export(os.path.join(scratch, "saved_model"), overwrite=True)
        return path
    with atomic_output(path, overwrite=True) as tmp:
        model.save(tmp, overwrite=True)
    model.export(os.path.join(os.fspath(out_dir), "saved_model"), overwrite=True)
    return path


def write_json(path, data):
    """Write ``data`` as indented JSON to ``path`` atomically (replacing it)."""
    with atomic_output(path, overwrite=True) as tmp:
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")


# ------------------------------------------------------------------ distribution
#: The names :func:`make_strategy` takes (the ``--strategy`` option of the ``train-*``
#: commands).
STRATEGIES = ("default", "mirrored", "multiworker")


class MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """``tf.distribute.MultiWorkerMirroredStrategy`` whose ``reduce`` accepts what Keras 3's
    ``Model.fit`` passes to it.

    Keras 3's TensorFlow trainer calls ``strategy.reduce`` on a nest of per-replica values
    (the first batch, to build the model's metrics) and with ``axis=0`` on the scalar
    metrics of each step; ``MultiWorkerMirroredStrategy.reduce`` takes neither, so
    ``fit`` fails before its first step under several workers (keras-team/keras#20585).
    This subclass reduces a nest element by element and a scalar with ``axis=None``,
    which is what ``MirroredStrategy`` does for the same calls on one worker; everything
    else (variables, all-reduce, dataset distribution, ``isinstance`` checks) is
    ``MultiWorkerMirroredStrategy``'s. Build it as that class (``cluster_resolver``,
    ``communication_options``) or with :func:`make_strategy` ``("multiworker")``.
    """

    def reduce(self, reduce_op, value, axis=None):
        reduce_one = super().reduce

        def one(v):
            rank = self.experimental_local_results(v)[0].shape.rank
            return reduce_one(reduce_op, v, None if rank == 0 else axis)

        return tf.nest.map_structure(one, value)


def _check_tf_config(raw):
    """The parsed ``TF_CONFIG`` of a multi-worker run; ``ValueError`` naming what is wrong."""
    example = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}')
    if not raw:
        raise ValueError("strategy 'multiworker' needs the TF_CONFIG environment variable (the "
                         f"cluster and this worker's task), e.g. TF_CONFIG='{example}'")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON ({exc}): {raw!r}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if (not isinstance(cluster, dict) or not cluster or not isinstance(task, dict)
            or not all(isinstance(v, list) and v and all(isinstance(a, str) for a in v)
                       for v in cluster.values())):
        raise ValueError("TF_CONFIG must be an object with a 'cluster' (job -> list of "
                         "'host:port') and a 'task' (type, index), e.g. "
                         f"{example}; got {raw!r}")
    unknown = sorted(set(cluster) - {"worker", "chief"})
    if unknown:
        raise ValueError(f"TF_CONFIG's cluster has jobs {unknown}; a multi-worker training run "
                         f"has only 'worker' (and optionally one 'chief'): {raw!r}")
    kind, index = task.get("type"), task.get("index", 0)
    if (kind not in cluster or isinstance(index, bool) or not isinstance(index, int)
            or not 0 <= index < len(cluster[kind])):
        raise ValueError(f"TF_CONFIG's task {task!r} is not one of the cluster's tasks "
                         f"{ {k: len(v) for k, v in cluster.items()} }: {raw!r}")
    return config


def make_strategy(name: str = "default"):
    """The ``tf.distribute`` strategy a trainer runs under, by name (:data:`STRATEGIES`).

    * ``"default"``: ``None``, i.e. the current strategy (one device);
    * ``"mirrored"``: ``tf.distribute.MirroredStrategy()`` over all local devices;
    * ``"multiworker"``: :class:`MultiWorkerStrategy` (TensorFlow picks the all-reduce:
      NCCL on GPUs, a ring on CPUs) over the cluster of the ``TF_CONFIG`` environment
      variable, e.g. for the first of two workers::

          TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                      "task": {"type": "worker", "index": 0}}'

      (the second has ``"index": 1``). Every worker runs the same training command;
      worker 0 is the chief unless the cluster has a ``chief`` job. TensorFlow needs
      this strategy created before any other TensorFlow operation runs in the process
      (the command line does so).

    Raises ``ValueError`` for another name or a missing or malformed ``TF_CONFIG``, and
    ``RuntimeError`` when TensorFlow has already started in this process.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    if name == "default":
        return None
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    _check_tf_config(os.environ.get("TF_CONFIG"))
    try:
        return MultiWorkerStrategy()
    except RuntimeError as exc:
        raise RuntimeError("the multi-worker strategy must be created before any other "
                           f"TensorFlow operation runs in the process: {exc}") from None


def is_chief(strategy=None) -> bool:
    """True on the worker that writes a training run's files: always on one worker, on the
    chief (worker 0, or the ``chief`` task) of a multi-worker ``strategy`` (default: the
    current one). Every worker must still call the trainers' save functions
    (:func:`save_trained_model`), in the same order."""
    strategy = strategy or tf.distribute.get_strategy()
    return bool(getattr(strategy.extended, "should_checkpoint", True))


def num_workers(strategy=None) -> int:
    """The number of worker processes of ``strategy`` (default: the current one): 1 but
    for a multi-worker strategy."""
    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    jobs = strategy.cluster_resolver.cluster_spec().as_dict()
    return max(1, len(jobs.get("worker", [])) + len(jobs.get("chief", [])))


def _workers_agree(strategy, value: int) -> bool:
    """Whether every worker passed the same ``value`` (a collective all-reduce, so also a
    barrier: no worker returns before all have called it). True on one worker."""
    if num_workers(strategy) == 1:
        return True

    def everywhere(v):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(v, tf.float64))

    mean = float(strategy.reduce("MEAN", everywhere(float(value)), axis=None))
    spread = float(strategy.reduce("MEAN", everywhere(abs(float(value) - mean)), axis=None))
    return spread == 0.0


def _check_same_resume_point(strategy, step, out_dir):
    """Refuse to train when the workers found different checkpoints in ``out_dir`` (each
    passes the step it resumes from, -1 for none)."""
    if not _workers_agree(strategy, step):
        raise RuntimeError(f"the workers found different checkpoints in {out_dir!r} (this "
                           f"one: {'none' if step < 0 else f'step/epoch {step}'}); the output "
                           "directory must be on storage that every worker sees")


def _after_last_checkpoint(strategy, step):
    """A barrier after ``model.fit``: no worker goes on before the chief has written its
    last checkpoint and ``state.json`` (its epoch-end callback runs after the last
    collective step, so a worker could otherwise return, start the next call on the same
    ``out_dir`` and read the previous checkpoint). Also checks that every worker ended at
    the same ``step``."""
    if not _workers_agree(strategy, step):
        raise RuntimeError(f"the workers ended training at different steps (this one: {step})")


def _check_batch_for_replicas(batch_size, strategy, what="batch_size"):
    replicas = int(strategy.num_replicas_in_sync)
    if batch_size is not None and batch_size % replicas:
        raise ValueError(f"{what} ({batch_size}) must be a multiple of the strategy's "
                         f"{replicas} replicas (each replica trains on an equal share)")


def _check_xla_collectives(jit_compile, strategy):
    """``ValueError`` for ``jit_compile`` under several workers without GPUs: the gradient
    all-reduce would be compiled into the XLA step, and XLA has no CPU collectives."""
    if (jit_compile is True and num_workers(strategy) > 1
            and not tf.config.list_logical_devices("GPU")):
        raise ValueError("jit_compile=True (--jit-compile) cannot train on several CPU "
                         "workers: XLA has no collective operations on CPUs; train without "
                         "it, or on GPUs")


def _shard_by_data(dataset):
    """``dataset`` with DATA auto-sharding: every worker builds the same global batches and
    keeps its replicas' rows (the stream is a function of the batch index, not of files)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


@contextlib.contextmanager
def _worker_scratch():
    """A temporary directory for a non-chief worker's copy of a file, deleted on exit."""
    path = tempfile.mkdtemp(prefix="tfstronglens-worker-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _save_checkpoint(model, path, chief):
    """Save ``model`` to ``path`` atomically on the chief, to a deleted scratch copy elsewhere."""
    if chief:
        with atomic_output(path, overwrite=True) as tmp:
            model.save(tmp, overwrite=True)
    else:
        with _worker_scratch() as scratch:
            model.save(os.path.join(scratch, os.path.basename(path)), overwrite=True)


# ------------------------------------------------------------------------- data
def _to_pair(example):
    """``(image [S, S], noise_std [])`` float32 from a feature dict or a tuple."""
    if isinstance(example, dict):
        image, noise = example["image"], example["noise_std"]
    else:
        image, noise = example[0], example[1]
    image = tf.cast(image, tf.float32)
    if image.shape.rank == 3:
        image = image[..., 0]
    return image, tf.reshape(tf.cast(noise, tf.float32), [])


def _check_element_spec(ds, what):
    spec = ds.element_spec
    if isinstance(spec, dict):
        missing = [k for k in ("image", "noise_std") if k not in spec]
        if missing:
            raise ValueError(f"{what}: examples must have the features 'image' and 'noise_std'; "
                             f"missing {missing} (features: {sorted(spec)})")
        img, noise = spec["image"], spec["noise_std"]
    elif isinstance(spec, tuple) and len(spec) >= 2:
        img, noise = spec[0], spec[1]
    else:
        raise ValueError(f"{what}: examples must be feature dicts {{'image', 'noise_std', ...}} "
                         f"or (image, noise_std) tuples, got element_spec {spec!r}")
    shape = img.shape
    if shape.rank == 3 and shape[-1] == 1:
        shape = shape[:2]
    if shape.rank != 2 or shape[0] is None or shape[0] != shape[1]:
        raise ValueError(f"{what}: 'image' must be a single unbatched square stamp [S, S] (or "
                         f"[S, S, 1]) with a static size, got shape {img.shape.as_list()}; "
                         "unbatch the dataset (ds.unbatch()) if it is batched")
    if not img.dtype.is_floating:
        raise ValueError(f"{what}: 'image' must be floating point, got {img.dtype.name}")
    if noise.shape.num_elements() != 1:
        raise ValueError(f"{what}: 'noise_std' must be a scalar per example, got shape "
                         f"{noise.shape.as_list()}")
    return int(shape[0])


def _cardinality(ds):
    n = int(ds.cardinality())
    if n >= 0:
        return n
    if n == int(tf.data.INFINITE_CARDINALITY):
        raise ValueError("the dataset is infinite (e.g. repeat()); pass a finite dataset and "
                         "set epochs instead")
    return int(ds.reduce(np.int64(0), lambda c, _: c + 1))


def load_galaxy_dataset(name: str, split: str = "train", *, data_dir=None, manual_dir=None,
                        config=None):
    """Load a galaxy TFDS dataset (``synthetic_galaxies`` or ``cosmos_galaxies``) or a
    directory written by ``tf.data.Dataset.save``.

    Args:
      name: dataset name, optionally with a config (``"synthetic_galaxies/tiny"``), or the
        path of a saved ``tf.data`` directory (whose elements are feature dicts).
      split: TFDS split (ignored for a saved directory).
      data_dir: TFDS data directory (default: TFDS's).
      manual_dir: directory of manually downloaded files (``cosmos_galaxies`` reads the
        GalSim COSMOS catalog from there; nothing is downloaded).
      config: builder config name (alternative to ``name/config``).

    Returns:
      ``(dataset, builder_or_None)``: an unbatched ``tf.data.Dataset`` of feature dicts.
    """
    if not isinstance(name, (str, os.PathLike)):
        raise ValueError(f"dataset must be a dataset name {_GALAXY_DATASETS}, a saved tf.data "
                         f"directory or a tf.data.Dataset, got {name!r}")
    name = os.fspath(name)
    if os.path.isdir(name):
        try:
            return tf.data.Dataset.load(name), None
        except Exception as exc:  # noqa: BLE001 - report which directory failed
            raise ValueError(f"dataset {name!r} is a directory but not a saved tf.data dataset "
                             f"(tf.data.Dataset.save): {exc}") from None
    base = name.split("/")[0].split(":")[0]
    if base not in _GALAXY_DATASETS:
        raise ValueError(f"dataset must be one of {_GALAXY_DATASETS} (optionally 'name/config'), "
                         f"a saved tf.data directory or a tf.data.Dataset, got {name!r}")
    import tensorflow_datasets as tfds

    from .. import datasets as _datasets  # noqa: F401  (registers the builders)

    full = name if config is None else f"{base}/{config}"
    try:
        builder = tfds.builder(full, data_dir=data_dir)
    except Exception as exc:  # noqa: BLE001 - TFDS raises several types for unknown names
        raise ValueError(f"cannot make the TFDS builder {full!r}: {exc}") from None
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    builder.download_and_prepare(download_config=download_config)
    if split not in builder.info.splits:
        raise ValueError(f"dataset {full!r} has no split {split!r}; splits: "
                         f"{sorted(builder.info.splits)}")
    return builder.as_dataset(split=split, shuffle_files=False), builder


def _resolve_data(dataset, validation, max_examples, data_dir, manual_dir, config):
    """``(train_pairs, heldout_pairs, n_train, n_heldout, image_size, description)``."""
    builder = None
    if isinstance(dataset, tf.data.Dataset):
        source, description = dataset, "tf.data.Dataset"
    else:
        source, builder = load_galaxy_dataset(dataset, "train", data_dir=data_dir,
                                              manual_dir=manual_dir, config=config)
        description = os.fspath(dataset) if builder is None else builder.info.full_name
    size = _check_element_spec(source, "dataset")
    if max_examples is not None:
        source = source.take(max_examples)
    heldout = None
    if isinstance(validation, tf.data.Dataset):
        heldout = validation
    elif isinstance(validation, str):
        if builder is None:
            raise ValueError(f"validation={validation!r} names a split, which needs a TFDS "
                             "dataset name; give a fraction, a count or a tf.data.Dataset")
        if validation not in builder.info.splits:
            raise ValueError(f"validation split {validation!r} is not in "
                             f"{sorted(builder.info.splits)}")
        heldout = builder.as_dataset(split=validation, shuffle_files=False)
    elif validation is None and builder is not None:
        for split in ("validation", "test"):
            if split in builder.info.splits:
                heldout = builder.as_dataset(split=split, shuffle_files=False)
                break
    if heldout is not None:
        if _check_element_spec(heldout, "validation") != size:
            raise ValueError("validation stamps do not have the training stamps' size")
        if max_examples is not None:
            heldout = heldout.take(max(1, math.ceil(max_examples / 5)))
        train = source
    else:
        n_total = _cardinality(source)
        frac = 0.1 if validation is None else validation
        if isinstance(frac, bool) or not isinstance(frac, numbers.Real):
            raise ValueError(f"validation must be a fraction in (0, 1), a count, a split name or "
                             f"a tf.data.Dataset, got {validation!r}")
        if isinstance(frac, numbers.Integral):
            n_held = int(frac)
        elif 0 < frac < 1:
            n_held = max(1, int(round(frac * n_total)))
        else:
            raise ValueError(f"validation fraction must be in (0, 1), got {validation!r}")
        if not 1 <= n_held < n_total:
            raise ValueError(f"validation={validation!r} holds out {n_held} of {n_total} examples; "
                             "at least one must be held out and one left for training")
        heldout, train = source.take(n_held), source.skip(n_held)
    train = train.map(_to_pair, num_parallel_calls=tf.data.AUTOTUNE)
    heldout = heldout.map(_to_pair, num_parallel_calls=tf.data.AUTOTUNE)
    n_train, n_held = _cardinality(train), _cardinality(heldout)
    if n_train == 0 or n_held == 0:
        raise ValueError(f"the dataset gives {n_train} training and {n_held} held-out examples; "
                         "both must be > 0")
    return train, heldout, n_train, n_held, size, description


# ------------------------------------------------------------------- checkpoints
class _EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: save the full model (with optimizer state) to a new file, then
    point ``state.json`` at it (each file written to a temporary name and renamed), then
    delete older checkpoints. A crash at any point leaves a state that names a complete
    checkpoint. A non-chief worker only saves a scratch copy (see :func:`is_chief`)."""

    def __init__(self, ckpt_dir, state, chief=True):
        super().__init__()
        self.ckpt_dir = ckpt_dir
        self.state = state
        self.chief = chief

    def on_epoch_end(self, epoch, logs=None):
        name = f"ckpt-{epoch + 1:04d}.keras"
        _save_checkpoint(self.model, os.path.join(self.ckpt_dir, name), self.chief)
        record = {k: float(v) for k, v in (logs or {}).items()
                  if isinstance(v, (numbers.Real, np.floating, np.ndarray, tf.Tensor))
                  and np.size(v) == 1}
        self.state["history"].append({"epoch": epoch + 1, **record})
        self.state["epoch"] = epoch + 1
        self.state["checkpoint"] = name
        if not self.chief:
            return
        write_json(os.path.join(self.ckpt_dir, STATE_FILE), self.state)
        for old in glob.glob(os.path.join(self.ckpt_dir, "ckpt-*.keras")):
            if os.path.basename(old) != name:
                os.remove(old)


# ------------------------------------------------------------------------ report
def _heldout_statistics(vae, heldout, batch_size, max_plot):
    """Per-galaxy chi2/pixel of the decoded posterior mean, ELBO and KL over ``heldout``."""

    @tf.function(autograph=False, reduce_retracing=True)
    def step(image, noise):
        noise = tf.reshape(noise, [-1, 1, 1])
        loglik, kl, _ = vae.elbo_terms(image, noise, training=False)
        recon = vae.decoder(vae.posterior(image).mean(), training=False)
        chi2 = tf.reduce_mean(tf.square((image - recon) / noise), axis=[1, 2])
        return chi2, loglik - kl, kl, recon

    chi2s, elbos, kls, plot = [], [], [], []
    for image, noise in heldout.batch(batch_size):
        chi2, elbo, kl, recon = step(image, noise)
        chi2s.append(chi2.numpy())
        elbos.append(elbo.numpy())
        kls.append(kl.numpy())
        have = sum(len(p[0]) for p in plot)
        if have < max_plot:
            k = max_plot - have
            plot.append((image.numpy()[:k], recon.numpy()[:k], noise.numpy()[:k]))
    chi2 = np.concatenate(chi2s)
    originals = np.concatenate([p[0] for p in plot])
    recons = np.concatenate([p[1] for p in plot])
    noises = np.concatenate([p[2] for p in plot])
    return chi2, np.concatenate(elbos), np.concatenate(kls), (originals, recons, noises)


def _figure(nrows, ncols, size=1.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size * ncols + 0.6, size * nrows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save_figure(fig, path):
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _reconstruction_png(path, originals, recons, noises, chi2):
    from ..plotting import plot_image

    n = len(originals)
    fig, axes = _figure(3, n)
    for j in range(n):
        vmax = float(np.max(originals[j]))
        vmin = float(np.min(originals[j]))
        resid = (originals[j] - recons[j]) / noises[j]
        plot_image(originals[j], ax=axes[0, j], colorbar=False, vmin=vmin, vmax=vmax)
        plot_image(recons[j], ax=axes[1, j], colorbar=False, vmin=vmin, vmax=vmax)
        plot_image(resid, ax=axes[2, j], colorbar=False, cmap="RdBu_r", vmin=-3, vmax=3,
                   title=f"chi2/pix {chi2[j]:.2f}")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("")
        ax.set_ylabel("")
    for ax, label in zip(axes[:, 0], ("original", "reconstruction", "residual / sigma")):
        ax.set_ylabel(label)
    fig.suptitle("held-out galaxies: originals / reconstructions (decoded posterior mean) / "
                 "residuals in noise sigma (colour range +-3)", fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)


def _samples_png(path, samples):
    from ..plotting import plot_image

    n = len(samples)
    ncols = int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    fig, axes = _figure(nrows, ncols)
    for k, ax in enumerate(axes.ravel()):
        if k < n:
            plot_image(samples[k], ax=ax, colorbar=False)
        ax.set_axis_off()
    fig.suptitle("decoded samples from the prior z ~ N(0, I)", fontsize=9)
    fig.tight_layout()
    return _save_figure(fig, path)


# --------------------------------------------------------------------- training
def _check_positive_int(value, name, allow_none=False):
    if allow_none and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_resume_settings(state, settings, out_dir):
    """Refuse to resume the checkpoint ``state`` with other ``settings`` (``{"arch": {...},
    "training": {...}}``): ``ValueError`` naming each changed setting (and its
    ``tfstronglens train-vae`` option), the checkpoint's value and the new one."""
    changed = []
    for group, values in settings.items():
        old = state.get(group, {})
        for name, value in values.items():
            if old.get(name) != value:
                option = f" (--{name.replace('_', '-')})" if name in _CLI_OPTIONS else ""
                changed.append(f"{name}{option}: checkpoint {old.get(name)!r}, now {value!r}")
    if changed:
        raise ValueError(f"the checkpoint in {out_dir!r} was trained with other settings: "
                         f"{'; '.join(changed)}. A resumed run keeps its settings: repeat them, "
                         "use another out_dir, or pass overwrite=True (--overwrite) to start "
                         "afresh")


def train_vae(dataset, out_dir, *, epochs: int = 20, batch_size: int = 64, latent_dim: int = 64,
              learning_rate: float = 1e-3, kl_warmup_steps: int = 1000, beta: float = 1.0,
              resume: bool = True, progress: bool = True, validation=None,
              max_examples: int | None = None, data_dir=None, manual_dir=None, config=None,
              base_filters: int = 32, max_filters: int = 128, normalization: str = "none",
              jit_compile: bool = False, strategy=None, overwrite: bool = False, seed=None,
              num_plot: int = 8, num_samples: int = 16) -> dict:
    r"""Train a :class:`~tfstronglens.models.VAE` on galaxy stamps, with checkpoints and a report.

    The data are the galaxy feature dicts (``"image"`` ``[S, S]`` normalised so that the
    noise-free galaxy peaks at ~1, ``"noise_std"`` the per-pixel noise in the same
    units; other features are ignored). Training runs ``model.fit`` with a Keras progress
    bar; after every epoch the full model, optimizer state included, is saved to
    ``out_dir/checkpoint/ckpt-NNNN.keras`` and ``out_dir/checkpoint/state.json`` (epoch,
    hyperparameters, metrics history) is updated, each through a temporary file renamed
    into place.

    **Resuming.** If ``out_dir`` holds such a checkpoint and ``resume`` is true, training
    continues from it (same weights, optimizer state and step count, so the KL warm-up
    also continues) up to ``epochs`` epochs in total (a finished run with at least
    ``epochs`` epochs and its report returns that report without doing anything). The
    run keeps the checkpoint's settings: the architecture (``latent_dim``,
    ``base_filters``, ``max_filters``, ``normalization``, the data's image size) and the
    training settings (``batch_size``, ``learning_rate``, ``kl_warmup_steps``, ``beta``,
    ``seed``) must equal the checkpoint's, else ``ValueError`` names each changed one with
    its old and new value. A run that was interrupted is resumed by repeating the call.
    A non-empty ``out_dir`` without checkpoint is refused (``FileExistsError``) unless
    ``overwrite=True``; ``overwrite=True`` also discards an existing checkpoint and starts
    afresh (files other than this function's outputs are left alone).

    **Outputs** in ``out_dir``: ``vae.keras`` (the final model), ``saved_model/encoder`` and
    ``saved_model/decoder`` (TF SavedModels, :meth:`VAE.export`), ``reconstructions.png``
    (held-out originals, reconstructions and residuals in units of the noise),
    ``prior_samples.png`` and ``report.json`` with the held-out statistics:

    * ``chi2_per_pixel``: percentiles (16, 50, 84; ``median`` = 50) and mean over
      held-out galaxies of ``chi2/Npix = mean_p ((x_p - D(mu(x))_p) / sigma)^2``, the
      reconstruction from the decoded posterior mean;
    * ``fraction_within_noise``: fraction of held-out galaxies with ``chi2/Npix <
      1 + 3 sqrt(2 / Npix)`` (:func:`within_noise_threshold`, the 3-sigma upper limit of a
      perfect model's chi2/Npix);
    * ``elbo`` and ``kl``: mean per-galaxy ELBO (nats, one-sample estimate) and KL.

    Args:
      dataset: ``"synthetic_galaxies"`` or ``"cosmos_galaxies"`` (TFDS names, optionally
        ``name/config``), the path of a directory saved with ``tf.data.Dataset.save``, or
        an unbatched ``tf.data.Dataset`` of feature dicts or ``(image, noise_std)``.
      out_dir: output directory (created if needed).
      epochs: total number of epochs (a resumed run counts the epochs already done).
      batch_size: images per step (reduced to the training-set size if larger); the last
        partial batch of each epoch is dropped (static shapes).
      latent_dim, base_filters, max_filters, normalization: the architecture
        (:func:`~tfstronglens.models.make_encoder`); the image size is the data's.
      learning_rate: Adam learning rate.
      kl_warmup_steps: optimizer steps of the linear KL warm-up (0 for none).
      beta: KL weight of the beta-VAE loss.
      resume: continue from a checkpoint in ``out_dir`` (default True).
      progress: show Keras' progress bar (default True).
      validation: the held-out set: ``None`` (the TFDS ``validation`` or ``test`` split,
        else 10% of the training data), a fraction in (0, 1) or a count of training
        examples held out, a split name, or a ``tf.data.Dataset``.
      max_examples: read at most this many training examples (and at most
        ``ceil(max_examples / 5)`` from a separate held-out split).
      data_dir, manual_dir, config: TFDS data directory, manual download directory and
        builder config (see :func:`load_galaxy_dataset`).
      jit_compile: compile the train step with XLA (on CPU the compilation takes long;
        useful on GPU/TPU).
      strategy: a ``tf.distribute`` strategy to build and train the model under
        (:func:`make_strategy`; ``batch_size`` must be a multiple of its replicas). Under
        several workers (``"multiworker"``) ``seed`` is required, every worker makes the
        same call, only the chief writes files and returns the report, the others return
        ``{"chief": False, "epochs", "history", "already_complete"}`` (see the module
        docstring). Under several replicas the per-epoch validation metrics (``val_*`` in
        the history) use whole batches of a multiple of the replicas only (none with
        fewer held-out examples than replicas); the report's held-out statistics use
        every held-out example.
      overwrite: see above.
      seed: seed of the shuffling and of the VAE's sampling noise (and, when not None, of
        Keras' global random state used for weight initialisation).
      num_plot, num_samples: galaxies in the reconstruction and prior-sample figures.

    Returns:
      The report (the content of ``report.json``) as a dict, plus ``"already_complete"``
      (not in the file): ``True`` when the run had already reached ``epochs`` and nothing
      was trained or written (the report is the stored one), else ``False``.
    """
    epochs = _check_positive_int(epochs, "epochs")
    batch_size = _check_positive_int(batch_size, "batch_size")
    latent_dim = _check_positive_int(latent_dim, "latent_dim")
    base_filters = _check_positive_int(base_filters, "base_filters")
    max_filters = _check_positive_int(max_filters, "max_filters")
    max_examples = _check_positive_int(max_examples, "max_examples", allow_none=True)
    num_plot = _check_positive_int(num_plot, "num_plot")
    num_samples = _check_positive_int(num_samples, "num_samples")
    if not (isinstance(learning_rate, numbers.Real) and math.isfinite(learning_rate)
            and learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}")
    try:
        out_dir = os.fspath(out_dir)
    except TypeError:
        raise ValueError(f"out_dir must be a path, got {out_dir!r}") from None
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir {out_dir!r} exists and is not a directory")
    strategy = strategy or tf.distribute.get_strategy()
    chief = is_chief(strategy)
    if seed is None and num_workers(strategy) > 1:
        raise ValueError("seed must be set (--seed) when training on several workers: every "
                         "worker must shuffle the data the same way, got seed=None")
    state = _read_state(out_dir) if os.path.isdir(out_dir) else None
    ckpt_dir = os.path.join(out_dir, CHECKPOINT_DIR)
    if overwrite:
        state = None
    elif os.path.isdir(out_dir) and os.listdir(out_dir):
        if state is None:
            raise FileExistsError(
                f"output directory {out_dir!r} is not empty and holds no train_vae checkpoint; "
                "pass overwrite=True (--overwrite) to write into it anyway")
        if not resume:
            raise FileExistsError(
                f"output directory {out_dir!r} holds a train_vae checkpoint (epoch "
                f"{state['epoch']}); pass resume=True to continue it or overwrite=True to "
                "start afresh")

    train, heldout, n_train, n_held, size, description = _resolve_data(
        dataset, validation, max_examples, data_dir, manual_dir, config)
    arch = dict(image_size=size, latent_dim=latent_dim, base_filters=base_filters,
                max_filters=max_filters, normalization=normalization)
    batch_size = min(batch_size, n_train)
    _check_batch_for_replicas(batch_size, strategy)
    training = dict(batch_size=batch_size, learning_rate=learning_rate,
                    kl_warmup_steps=kl_warmup_steps, beta=beta, seed=seed)
    if state is not None:
        _check_resume_settings(state, {"arch": arch, "training": training}, out_dir)
        if int(state["epoch"]) >= epochs:
            done = _read_report(out_dir)
            if done is not None and done.get("epochs") == int(state["epoch"]):
                if progress:
                    print(f"train_vae: {out_dir!r} is complete ({state['epoch']} epochs >= "
                          f"{epochs}); nothing to do")
                return dict(done, already_complete=True)
    _check_xla_collectives(bool(jit_compile), strategy)
    _check_same_resume_point(strategy, -1 if state is None else int(state["epoch"]), out_dir)
    if chief:
        if overwrite:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        os.makedirs(ckpt_dir, exist_ok=True)

    if seed is not None and state is None:
        keras.utils.set_random_seed(int(seed))
    with strategy.scope():
        if state is not None:
            vae = keras.models.load_model(os.path.join(ckpt_dir, state["checkpoint"]))
            initial_epoch = int(state["epoch"])
            if progress:
                print(f"train_vae: resuming {out_dir!r} from epoch {initial_epoch} "
                      f"(checkpoint {state['checkpoint']})")
        else:
            vae = VAE(beta=beta, kl_warmup_steps=kl_warmup_steps, seed=seed, **arch)
            vae.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=jit_compile)
            initial_epoch = 0
            state = {"command": _COMMAND, "epoch": 0, "checkpoint": None, "arch": arch,
                     "training": training, "dataset": description, "history": []}

    nbytes = n_train * size * size * 4
    train_batches = train.cache() if nbytes < _CACHE_BYTES else train
    train_batches = _shard_by_data(train_batches
                                   .shuffle(min(n_train, 10000), seed=seed,
                                            reshuffle_each_iteration=True)
                                   .batch(batch_size, drop_remainder=True)
                                   .prefetch(tf.data.AUTOTUNE))
    heldout = heldout.cache() if n_held * size * size * 4 < _CACHE_BYTES else heldout
    replicas = int(strategy.num_replicas_in_sync)
    if replicas == 1:
        val_batches = _shard_by_data(heldout.batch(batch_size).prefetch(tf.data.AUTOTUNE))
    else:  # equal shares for every replica (Keras' fit fails on unequal ones)
        val_batch = min(batch_size, n_held) // replicas * replicas
        val_batches = None if val_batch == 0 else _shard_by_data(
            heldout.batch(val_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE))

    t0 = time.perf_counter()
    if initial_epoch < epochs:
        vae.fit(train_batches, epochs=epochs, initial_epoch=initial_epoch,
                validation_data=val_batches, verbose=1 if progress else 0, shuffle=False,
                callbacks=[_EpochCheckpoint(ckpt_dir, state, chief)])
    _after_last_checkpoint(strategy, int(state["epoch"]))
    train_seconds = time.perf_counter() - t0

    # ---------------------------------------------------------- final outputs
    save_trained_model(vae, out_dir, "vae.keras", strategy)
    if not chief:
        return {"chief": False, "epochs": int(state["epoch"]), "history": state["history"],
                "already_complete": False}
    export_path = os.path.join(out_dir, "saved_model")

    chi2, elbo, kl, (orig, recon, noise) = _heldout_statistics(vae, heldout, batch_size, num_plot)
    npix = size * size
    threshold = within_noise_threshold(npix)
    p16, p50, p84 = (float(v) for v in np.percentile(chi2, [16, 50, 84]))
    recon_png = _reconstruction_png(os.path.join(out_dir, "reconstructions.png"),
                                    orig, recon, noise, chi2)
    samples = vae.decode(vae.sample_prior(num_samples, seed=0)).numpy()
    samples_png = _samples_png(os.path.join(out_dir, "prior_samples.png"), samples)
    report = {
        "dataset": description,
        "epochs": int(state["epoch"]),
        "num_train": int(n_train),
        "num_heldout": int(len(chi2)),
        "image_size": int(size),
        "latent_dim": int(vae.latent_dim),
        "chi2_per_pixel": {"median": p50, "p16": p16, "p50": p50, "p84": p84,
                           "mean": float(np.mean(chi2))},
        "within_noise_threshold": threshold,
        "fraction_within_noise": float(np.mean(chi2 < threshold)),
        "elbo": float(np.mean(elbo)),
        "kl": float(np.mean(kl)),
        "definitions": {
            "chi2_per_pixel": "mean over pixels of ((x - D(mu(x))) / noise_std)^2 per held-out "
                              "galaxy, D(mu(x)) the decoded posterior mean",
            "fraction_within_noise": "fraction of held-out galaxies with chi2_per_pixel < "
                                     "1 + 3 sqrt(2 / Npix)",
            "elbo": "mean per-galaxy evidence lower bound in nats (one posterior sample)",
        },
        "train_seconds_this_call": train_seconds,
        "history": state["history"],
        "training": state["training"],
        "arch": state["arch"],
        "files": {"model": "vae.keras", "saved_model": os.path.basename(export_path),
                  "reconstructions": os.path.basename(recon_png),
                  "prior_samples": os.path.basename(samples_png),
                  "checkpoint": os.path.join(CHECKPOINT_DIR, STATE_FILE)},
    }
    write_json(os.path.join(out_dir, "report.json"), report)
    if progress:
        print(f"train_vae: {report['epochs']} epochs; held-out chi2/pixel median {p50:.3f} "
              f"(16-84%: {p16:.3f}-{p84:.3f}); within the noise: "
              f"{100 * report['fraction_within_noise']:.1f}%; wrote {out_dir}")
    return dict(report, already_complete=False)


# ------------------------------------------------------------ streams of simulations
class _StepCheckpoint(keras.callbacks.Callback):
    """Every ``every`` steps (one Keras "epoch" of the stream): save the full model, with
    optimizer state, then point ``state.json`` at it (both atomically), then delete older
    checkpoints. A crash at any point leaves a state that names a complete checkpoint.
    A non-chief worker only saves a scratch copy (see :func:`is_chief`)."""

    def __init__(self, ckpt_dir, state, every, chief=True):
        super().__init__()
        self.ckpt_dir, self.state, self.every, self.chief = ckpt_dir, state, every, chief

    def on_epoch_end(self, epoch, logs=None):
        step = (epoch + 1) * self.every
        name = f"ckpt-{step:08d}.keras"
        _save_checkpoint(self.model, os.path.join(self.ckpt_dir, name), self.chief)
        record = {k: float(v) for k, v in (logs or {}).items()
                  if isinstance(v, (numbers.Real, np.floating, np.ndarray, tf.Tensor))
                  and np.size(v) == 1}
        self.state["history"].append({"step": step, **record})
        self.state["step"] = step
        self.state["checkpoint"] = name
        if not self.chief:
            return
        write_json(os.path.join(self.ckpt_dir, STATE_FILE), self.state)
        for old in glob.glob(os.path.join(self.ckpt_dir, "ckpt-*.keras")):
            if os.path.basename(old) != name:
                os.remove(old)


#: Learning-rate schedules of the stream trainers, by name: ``(lr, steps) -> schedule``.
LEARNING_RATE_SCHEDULES = {
    "constant": lambda lr, steps: lr,
    "cosine": lambda lr, steps: keras.optimizers.schedules.CosineDecay(lr, steps, alpha=0.01),
}


def read_stream_state(out_dir, command: str):
    """The resume state of a :func:`train_on_stream` run of ``command`` in ``out_dir``, or
    ``None``."""
    path = os.path.join(os.fspath(out_dir), CHECKPOINT_DIR, STATE_FILE)
    try:
        with open(path) as fh:
            state = json.load(fh)
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(state, dict) or state.get("command") != command:
        return None
    ckpt = os.path.join(os.fspath(out_dir), CHECKPOINT_DIR, str(state.get("checkpoint", "")))
    return state if os.path.isfile(ckpt) else None


def train_on_stream(make_model, make_dataset, out_dir, *, steps: int, command: str,
                    settings: dict, steps_per_checkpoint: int = 100, resume: bool = True,
                    overwrite: bool = False, progress: bool = True, strategy=None):
    """Train a Keras model on an infinite stream of simulated batches, with checkpoints that
    resume exactly.

    The shared loop of the package's simulation-trained models (each model brings its
    loss in its ``train_step``): ``model.fit`` on ``make_dataset(start)``, a
    ``tf.data.Dataset`` of training batches from batch index ``start`` on (batch ``k`` is a
    deterministic function of ``k``, e.g. a stateless seed, so a resumed run sees the same
    data as an uninterrupted one), in "epochs" of ``steps_per_checkpoint`` steps; after
    each, the model and optimizer state go to ``out_dir/checkpoint/ckpt-<step>.keras`` and
    ``state.json`` (``command``, ``settings``, the step, the metric history).

    **Resuming.** Rerunning with the same ``out_dir`` continues from the last checkpoint up
    to ``steps`` steps in total; ``settings`` must equal the checkpoint's (``ValueError``
    naming the differences otherwise). A non-empty ``out_dir`` without such a checkpoint
    is a ``FileExistsError`` unless ``overwrite``; ``overwrite`` starts afresh.

    Args:
      make_model: ``() -> compiled keras.Model`` (called inside ``strategy.scope()``).
      make_dataset: ``start -> tf.data.Dataset`` of ``(inputs, targets)`` batches.
      steps: total optimizer steps (a multiple of ``steps_per_checkpoint`` is done).
      command: the name recorded in the state (a checkpoint of another command is not
        resumed).
      settings: JSON-able settings that define the run.
      strategy: a ``tf.distribute`` strategy (default: the current one; see
        :func:`make_strategy`). Under several workers every worker makes the same call
        with the same ``make_dataset`` (the global batch ``k`` must be the same on every
        worker; each keeps its replicas' rows) and only the chief writes (module
        docstring); the batch size must be a multiple of the replicas.

    Returns ``(model, state)``; ``state["step"]`` is the number of steps done.
    """
    steps = _check_positive_int(steps, "steps")
    every = _check_positive_int(steps_per_checkpoint, "steps_per_checkpoint")
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir {out_dir!r} exists and is not a directory")
    ckpt_dir = os.path.join(out_dir, CHECKPOINT_DIR)
    strategy = strategy or tf.distribute.get_strategy()
    chief = is_chief(strategy)
    state = read_stream_state(out_dir, command) if os.path.isdir(out_dir) else None
    if overwrite:
        state = None
    elif os.path.isdir(out_dir) and os.listdir(out_dir):
        if state is None:
            raise FileExistsError(f"output directory {out_dir!r} is not empty and holds no "
                                  f"{command} checkpoint; pass overwrite=True (--overwrite) "
                                  "to write into it anyway")
        if not resume:
            raise FileExistsError(f"output directory {out_dir!r} holds a {command} checkpoint "
                                  f"(step {state['step']}); resume it or pass overwrite=True")
    settings = json.loads(json.dumps(settings))
    if state is not None and state.get("settings") != settings:
        old = state.get("settings", {})
        diff = ", ".join(f"{k}: checkpoint {old.get(k)!r}, now {settings.get(k)!r}"
                         for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k))
        raise ValueError(f"the checkpoint in {out_dir!r} was trained with other settings "
                         f"({diff}); use another out_dir or overwrite=True")
    _check_same_resume_point(strategy, -1 if state is None else int(state["step"]), out_dir)
    if chief:
        if overwrite:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        os.makedirs(ckpt_dir, exist_ok=True)
    with strategy.scope():
        if state is not None:
            model = keras.models.load_model(os.path.join(ckpt_dir, state["checkpoint"]))
            if progress:
                print(f"{command}: resuming {out_dir!r} from step {state['step']}")
        else:
            model = make_model()
            state = {"command": command, "step": 0, "checkpoint": None, "settings": settings,
                     "history": []}
    _check_xla_collectives(getattr(model, "jit_compile", False), strategy)
    epochs = -(-steps // every)
    initial = int(state["step"]) // every
    if initial < epochs:
        dataset = make_dataset(initial * every)
        batch = tf.nest.flatten(dataset.element_spec)[0].shape
        _check_batch_for_replicas(batch[0] if batch.rank else None, strategy,
                                  "the batch size of make_dataset's batches")
        model.fit(_shard_by_data(dataset), epochs=epochs, initial_epoch=initial,
                  steps_per_epoch=every, shuffle=False, verbose=1 if progress else 0,
                  callbacks=[_StepCheckpoint(ckpt_dir, state, every, chief)])
        _after_last_checkpoint(strategy, int(state["step"]))
    elif progress:
        print(f"{command}: {out_dir!r} already has {state['step']} >= {steps} steps")
    return model, state
