r"""Training on several workers (``tf.distribute.MultiWorkerMirroredStrategy`` from
``TF_CONFIG``), checkpoints and resume included.

#### The test

Two worker processes on 127.0.0.1 (free ports, ``TF_CONFIG`` built here) train, each with
``make_strategy("multiworker")`` (one CPU replica per worker, ring all-reduce on CPUs):

1. the VAE with :func:`train_vae` (3 epochs of one step of 8 stamps; 3 held-out stamps,
   an odd count, of which the replicas validate on equal shares of 1);
2. a small Keras model with :func:`train_on_stream` (the loop of the RIM, CNN and ratio
   trainers) for ``K`` steps, then the same call with ``N > K`` steps, which resumes from
   the chief's checkpoint files (the model, optimizer and step are read back from disk).
   The slow test restarts the processes instead: both exit after ``K`` steps, and two new
   ones resume.

A synchronous data-parallel step over ``R`` replicas, each taking ``B / R`` rows of the
global batch, is the step of one device on the whole batch (the mean gradient), up to
float rounding in the all-reduce. So:

* the streamed model's per-step losses of the interrupted two-worker run must equal those
  of an uninterrupted ``N``-step run on one device in this process (no randomness but the
  data's, which is a function of the batch index); a wrong resume (from step 0, or a
  fresh optimizer) or a wrong split of the batch changes them by far more than the
  tolerance, as the test checks on the first run alone;
* the VAE draws its reparameterisation noise per replica from its seed generator, so each
  replica draws the same noise rows: its one-device reference is therefore one process
  with the same two replicas (``MirroredStrategy`` over two logical CPUs), which takes
  the same data rows and noise per replica and must give the same per-step losses;
* only the chief writes: the VAE's and the stream's files exist once, no worker's
  scratch copy or temporary file is left, and the other worker returns
  ``{"chief": False, ...}``.

Every process has a timeout and is killed in ``finally``; the tests are skipped (with the
reason) only where no local TCP port can be opened. The cheap checks below show that
every ``train-*`` command builds its strategy with the one factory, and that every
stream trainer's batches have the static shapes XLA and TPUs need.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

STEPS_FIRST, STEPS_TOTAL = 2, 4  # the stream run: K steps, then resumed to N
BATCH = 8
TIMEOUT = 300  # s per phase: two TensorFlow start-ups on a loaded 2-core machine


# ------------------------------------------------------------ what the processes run
def _stream_model():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    return model


def _stream(start):
    """Batch ``k`` of the stream: a function of ``k`` alone (stateless seeds)."""
    import tensorflow as tf

    def batch(k):
        x = tf.random.stateless_normal([BATCH, 4], seed=tf.stack([k, tf.constant(7, tf.int64)]))
        y = tf.reduce_sum(x * [1.0, -2.0, 0.5, 3.0], -1, keepdims=True) + tf.sin(3.0 * x[:, :1])
        return x, y

    return tf.data.Dataset.range(start, 2**62).map(batch)


def _train_stream(out, steps, strategy):
    from tfstronglens.models.training import train_on_stream

    _, state = train_on_stream(_stream_model, _stream, out, steps=steps, command="test.stream",
                               settings={"batch": BATCH}, steps_per_checkpoint=1,
                               progress=False, strategy=strategy)
    return [h["loss"] for h in state["history"]]


def _train_vae(data, out, strategy, **kw):
    from tfstronglens.models.training import train_vae

    report = train_vae(data, out, epochs=3, batch_size=BATCH, latent_dim=4, base_filters=4,
                       max_filters=8, learning_rate=3e-3, kl_warmup_steps=2, validation=3,
                       seed=3, strategy=strategy, progress=False, num_plot=2, num_samples=4,
                       **kw)
    return {"chief": report.get("chief", True),
            "loss": [h["loss"] for h in report["history"]],
            "val_loss": [h["val_loss"] for h in report["history"]]}


def _cnn_sgd_step(strategy):
    """One SGD step of a tiny lens CNN on one batch of 8, on one device and under
    ``strategy`` (two replicas of 4): how far the weights moved, and how far apart the
    two results are (a train step that does not divide its loss by the replicas moves
    them twice as far under two)."""
    import keras
    import tensorflow as tf

    from tfstronglens.models import LensPosteriorNetwork

    rng = np.random.default_rng(0)
    x = {"image": rng.normal(size=(8, 16, 16)).astype("float32"),
         "noise": np.full(8, 0.5, "float32")}
    ds = tf.data.Dataset.from_tensors((x, rng.normal(size=(8, 2)).astype("float32")))

    def make():
        keras.utils.set_random_seed(0)
        net = LensPosteriorNetwork(["a", "b"], [0.0, 0.0], [1.0, 1.0], num_pix=16,
                                   pixel_scale=0.1, head="gaussian", filters=(4, 8), features=8)
        net.compile(optimizer=keras.optimizers.SGD(0.1))
        net(x)
        return net

    one = make()
    start = [w.numpy() for w in one.weights]
    one.fit(ds, epochs=1, verbose=0)
    with strategy.scope():
        two = make()
    two.fit(ds, epochs=1, verbose=0)
    return {"moved": max(float(np.abs(a.numpy() - b).max()) for a, b in zip(one.weights, start)),
            "diff": max(float(np.abs(a.numpy() - b.numpy()).max())
                        for a, b in zip(one.weights, two.weights))}


def _worker_main(mode, args):
    """Run in a subprocess: ``python tests/test_multiworker.py MODE ARGS_JSON``."""
    import tensorflow as tf

    if mode == "reference-vae":  # one worker, two replicas
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        return {"vae": _train_vae(args["data"], args["vae_out"], strategy),
                "cnn": _cnn_sgd_step(strategy)}
    from tfstronglens.models.training import is_chief, make_strategy

    strategy = make_strategy("multiworker")
    result = {"chief": is_chief(strategy), "replicas": int(strategy.num_replicas_in_sync)}
    if mode == "first":  # the VAE, then K stream steps, then a resumed call to N
        try:  # XLA has no CPU collectives: refused before anything is built or written
            _train_vae(args["data"], args["vae_out"], strategy, jit_compile=True)
        except ValueError as exc:
            result["jit_refused"] = str(exc)
        result["vae"] = _train_vae(args["data"], args["vae_out"], strategy)
        result["stream_first"] = _train_stream(args["stream_out"], STEPS_FIRST, strategy)
        result["stream"] = _train_stream(args["stream_out"], STEPS_TOTAL, strategy)
    else:  # "stream": one call
        result["stream"] = _train_stream(args["stream_out"], args["steps"], strategy)
    return result


# --------------------------------------------------------------------------- helpers
def _free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _launch(mode, args, tmp_path, name, tf_config=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1",
               TMPDIR=str(tmp_path / "scratch"))
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    out = open(tmp_path / f"{name}.out", "w")
    err = open(tmp_path / f"{name}.err", "w")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), mode, json.dumps(args)],
                            env=env, stdout=out, stderr=err, cwd=str(tmp_path))
    out.close()
    err.close()
    return proc


def _wait(procs, names, tmp_path):
    """The RESULT line of each process; fail with its stderr's tail if it failed."""
    deadline = time.monotonic() + TIMEOUT
    for proc, name in zip(procs, names):
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"process {name} did not finish in {TIMEOUT} s")
    results = []
    for proc, name in zip(procs, names):
        out = (tmp_path / f"{name}.out").read_text()
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            err = (tmp_path / f"{name}.err").read_text()[-3000:]
            pytest.fail(f"process {name} exited with {proc.returncode}:\n{err}")
        results.append(json.loads(lines[-1][len("RESULT "):]))
    return results


def _kill(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _galaxies(path):
    """11 stamps of 16x16 (3 held out, 8 trained on) saved as a tf.data directory."""
    import tensorflow as tf

    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:16, :16] - 7.5
    width = rng.uniform(1.5, 3.5, 11)[:, None, None]
    image = np.exp(-(xx**2 + yy**2) / (2 * width**2)) + 0.05 * rng.normal(size=(11, 16, 16))
    ds = tf.data.Dataset.from_tensor_slices({"image": image.astype(np.float32),
                                             "noise_std": np.full(11, 0.05, np.float32)})
    ds.save(str(path))
    return str(path)


# ----------------------------------------------------------------------------- tests
def _ports_or_skip(n):
    try:
        return _free_ports(n)
    except OSError as exc:
        pytest.skip(f"cannot open a local TCP port for the workers: {exc}")


def _cluster(ports):
    return [{"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
             "task": {"type": "worker", "index": i}} for i in range(len(ports))]


def _check_stream(first, resumed, tmp_path):
    """Per-step losses of the 2-worker stream run, stopped after K steps and resumed to N,
    equal those of an uninterrupted one-device run; only the chief's files remain."""
    from tfstronglens.models.training import CHECKPOINT_DIR, STATE_FILE

    reference = _train_stream(str(tmp_path / "stream_ref"), STEPS_TOTAL, None)
    assert len(reference) == STEPS_TOTAL
    for r in first:
        np.testing.assert_allclose(r, reference[:STEPS_FIRST], rtol=1e-5)
    for r in resumed:
        np.testing.assert_allclose(r, reference, rtol=1e-5)
        # the losses move by much more than the tolerance: a resume from scratch (the
        # first steps again) or a half batch would not pass
        assert not np.allclose(r[STEPS_FIRST:], reference[:STEPS_TOTAL - STEPS_FIRST], rtol=1e-3)
    state = json.loads((tmp_path / "stream" / CHECKPOINT_DIR / STATE_FILE).read_text())
    assert state["step"] == STEPS_TOTAL
    assert sorted(os.listdir(tmp_path / "stream" / CHECKPOINT_DIR)) == [
        f"ckpt-{STEPS_TOTAL:08d}.keras", STATE_FILE]


def test_two_workers_equal_one_device_and_resume(tmp_path):
    """The VAE and the stream loop on two workers; the stream run is resumed by a second
    call in the same processes (from the chief's files; the slow test below restarts the
    processes instead)."""
    ports = _ports_or_skip(2)
    (tmp_path / "scratch").mkdir()
    args = {"data": _galaxies(tmp_path / "galaxies"), "vae_out": str(tmp_path / "vae"),
            "stream_out": str(tmp_path / "stream")}
    procs = []
    try:  # the workers, and the VAE's one-process two-replica reference meanwhile
        procs = [_launch("first", args, tmp_path, f"worker{i}", cfg)
                 for i, cfg in enumerate(_cluster(ports))]
        procs.append(_launch("reference-vae", dict(args, vae_out=str(tmp_path / "vae_ref")),
                             tmp_path, "reference"))
        *workers, ref = _wait(procs, ["worker0", "worker1", "reference"], tmp_path)
    finally:
        _kill(procs)

    assert [r["chief"] for r in workers] == [True, False]
    assert [r["replicas"] for r in workers] == [2, 2]
    assert all("XLA has no collective operations on CPUs" in r.get("jit_refused", "")
               for r in workers)
    _check_stream([r["stream_first"] for r in workers], [r["stream"] for r in workers],
                  tmp_path)
    # the VAE: 2 workers x 1 replica == 1 worker x 2 replicas
    assert [r["vae"]["chief"] for r in workers] == [True, False]
    for r in workers:
        np.testing.assert_allclose(r["vae"]["loss"], ref["vae"]["loss"], rtol=1e-4)
        np.testing.assert_allclose(r["vae"]["val_loss"], ref["vae"]["val_loss"], rtol=1e-4)
    assert len(set(np.round(ref["vae"]["loss"], 3))) == 3  # it trains: the losses change
    # the lens CNN's step on two replicas is the one-device step (loss / replicas)
    assert ref["cnn"]["moved"] > 1e-2 and ref["cnn"]["diff"] < 1e-3 * ref["cnn"]["moved"]
    report = json.loads((tmp_path / "vae" / "report.json").read_text())
    assert report["epochs"] == 3
    assert [h["loss"] for h in report["history"]] == workers[0]["vae"]["loss"]
    assert sorted(os.listdir(tmp_path / "vae")) == sorted(
        ["checkpoint", "prior_samples.png", "reconstructions.png", "report.json",
         "saved_model", "vae.keras"])
    # only the chief wrote; the other worker's scratch copies are gone
    assert os.listdir(tmp_path / "scratch") == []


@pytest.mark.slow
def test_restarted_workers_resume_from_the_checkpoint(tmp_path):
    """Both workers stop after K steps; two new processes (new ports, as after a crash)
    continue to N steps from the chief's checkpoint."""
    ports = _ports_or_skip(4)
    (tmp_path / "scratch").mkdir()
    args = {"stream_out": str(tmp_path / "stream")}
    procs, results = [], []
    try:
        for phase, (steps, pair) in enumerate([(STEPS_FIRST, ports[:2]),
                                               (STEPS_TOTAL, ports[2:])]):
            procs = [_launch("stream", dict(args, steps=steps), tmp_path, f"p{phase}w{i}", cfg)
                     for i, cfg in enumerate(_cluster(pair))]
            results.append(_wait(procs, [f"p{phase}w0", f"p{phase}w1"], tmp_path))
    finally:
        _kill(procs)
    _check_stream([r["stream"] for r in results[0]], [r["stream"] for r in results[1]],
                  tmp_path)
    assert os.listdir(tmp_path / "scratch") == []


def test_make_strategy_rejects_bad_tf_config(monkeypatch):
    from tfstronglens.models.training import STRATEGIES, make_strategy

    assert STRATEGIES == ("default", "mirrored", "multiworker")
    assert make_strategy("default") is None
    with pytest.raises(ValueError, match="strategy must be one of"):
        make_strategy("tpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable"):
        make_strategy("multiworker")
    bad = {"not json": "not valid JSON",
           '{"cluster": {"worker": ["a:1"]}}': "must be an object with a 'cluster'",
           '{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}': "jobs \\['ps'\\]",
           '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}':
               "is not one of the cluster's tasks"}
    for value, message in bad.items():
        monkeypatch.setenv("TF_CONFIG", value)
        with pytest.raises(ValueError, match=message):
            make_strategy("multiworker")


@pytest.mark.parametrize("command", [
    ["train-vae", "--dataset", "synthetic_galaxies/tiny", "--seed", "1"],
    ["train-rim"], ["train-cnn"], ["train-ratio"]])
def test_every_train_command_takes_the_shared_strategy_option(command, tmp_path, monkeypatch,
                                                              capsys):
    """Each ``train-*`` command builds its strategy with ``make_strategy``: a multi-worker
    run without ``TF_CONFIG`` is refused (exit 2, naming TF_CONFIG) before any training."""
    from tfstronglens.cli import main

    monkeypatch.delenv("TF_CONFIG", raising=False)
    out = tmp_path / "out"
    code = main([*command, "--out", str(out), "--strategy", "multiworker", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--strategy multiworker" in err and "TF_CONFIG" in err
    assert not out.exists()
    assert main([*command, "--out", str(out), "--strategy", "tpu"]) == 2
    assert main([*command, "--out", str(out), "--strategy", "multiworker", "--mirrored"]) == 2
    assert "--mirrored contradicts --strategy multiworker" in capsys.readouterr().err
    assert not out.exists()


def test_stream_trainers_use_the_shared_loop_with_static_batches(monkeypatch):
    """RIM, CNN and ratio trainers hand their strategy to ``train_on_stream``, and their
    streams' batches have fully static shapes (what XLA / ``TPUStrategy`` need)."""
    import tensorflow as tf

    from tfstronglens.models import amortized_training, ratio_training, rim_training

    class Reached(Exception):
        pass

    def fake(make_model, make_dataset, out_dir, *, strategy, **kw):
        specs = tf.nest.flatten(make_dataset(0).element_spec)
        raise Reached(strategy, [s.shape for s in specs])

    strategy = tf.distribute.get_strategy()
    sim = {"num_pix": 16, "galaxy_count": 4}
    calls = {
        "rim": (rim_training, lambda out: rim_training.train_rim(
            out, simulation=dict(rim_training.DEFAULT_RIM_SIMULATION, num_pix=16,
                                 source="sersic"),
            batch_size=2, source_num_pix=16, filters=(4, 4, 4), strategy=strategy)),
        "cnn": (amortized_training, lambda out: amortized_training.train_cnn(
            out, simulations=[dict(amortized_training.DEFAULT_CNN_SIMULATIONS[0], **sim,
                                   source="sersic")],
            batch_size=2, filters=(4,), features=4, head="gaussian", strategy=strategy)),
        "ratio": (ratio_training, lambda out: ratio_training.train_ratio(
            out, simulation=dict(ratio_training.DEFAULT_RATIO_SIMULATION, num_pix=16),
            batch_size=2, filters=(4,), features=4, hidden=(4,), strategy=strategy)),
    }
    # (the CNN's standardisation would simulate batches first: not what is tested here)
    monkeypatch.setattr(amortized_training, "parameter_moments",
                        lambda gens, names, batch: (np.zeros(len(names)), np.ones(len(names))))
    for name, (module, call) in calls.items():
        monkeypatch.setattr(module, "train_on_stream", fake)
        with pytest.raises(Reached) as info:
            call("unused")
        got, shapes = info.value.args
        assert got is strategy, name
        assert all(s.is_fully_defined() and s[0] == 2 for s in shapes), (name, shapes)


if __name__ == "__main__":  # a worker process of test_two_workers_equal_one_device_and_resume
    print("RESULT " + json.dumps(_worker_main(sys.argv[1], json.loads(sys.argv[2]))), flush=True)
