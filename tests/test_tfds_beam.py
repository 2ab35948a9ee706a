"""Apache Beam builds of the TFDS builders (``lens_simulations``, ``cosmos_galaxies``): with
the DirectRunner they write the same records as the plain build, each example being a
function of the config, the split and its index (or catalog row) only."""

import glob
import os

import numpy as np
import pytest

beam = pytest.importorskip("apache_beam")
tfds = pytest.importorskip("tensorflow_datasets")
tf = pytest.importorskip("tensorflow")

from tfstronglens.datasets import _beam  # noqa: E402
from tfstronglens.datasets._builder import beam_requested  # noqa: E402
from tfstronglens.datasets.lens_simulations import (SPLIT_SEEDS, LensSimulations,  # noqa: E402
                                                    LensSimulationsConfig, batch_examples,
                                                    build, num_batches,
                                                    pipeline_options_from_flags)

# the tiny config's simulation, with batches of 3 so that the last batch of every split
# is partial (7 = 3 + 3 + 1, 5 = 3 + 2)
TINY = [c for c in LensSimulations.BUILDER_CONFIGS if c.name.endswith("-tiny")][0]
LENS_CONFIG = LensSimulationsConfig(name="beam-test", description="Beam test",
                                    simulation=dict(TINY.simulation), num_train=7,
                                    num_validation=5, num_test=0, batch_size=3)


def _beam_download_config(**kw):
    # two threads of one process: the batches are drawn concurrently, in no fixed order
    opts = beam.options.pipeline_options.PipelineOptions(flags=[
        "--runner=DirectRunner", "--direct_num_workers=2",
        "--direct_running_mode=multi_threading"])
    return tfds.download.DownloadConfig(beam_options=opts, **kw)


def _canonical(record: bytes) -> bytes:
    """A serialized ``tf.train.Example`` re-serialized deterministically (feature map
    sorted): protobuf writes map entries in an order that may differ between processes."""
    return tf.train.Example.FromString(record).SerializeToString(deterministic=True)


def _records(builder, split, canonical=False):
    """The serialized records of a split, in file order (shards sorted)."""
    files = sorted(glob.glob(os.path.join(builder.data_dir, f"*-{split}.tfrecord-*")))
    assert files, f"no record files for {split} in {builder.data_dir}"
    recs = [r.numpy() for r in tf.data.TFRecordDataset(files)]
    return [_canonical(r) for r in recs] if canonical else recs


def _generator(builder, split):
    from tfstronglens.simulation import LensDatasetGenerator

    return LensDatasetGenerator(builder.builder_config.simulation_config(SPLIT_SEEDS[split]))


def _expected_records(builder, split, n):
    """``{key: serialized record}`` computed directly from the generator, batch by batch."""
    from tensorflow_datasets.core import example_serializer

    cfg = builder.builder_config
    gen = _generator(builder, split)
    ser = example_serializer.ExampleSerializer(builder.info.features.get_serialized_info())
    out = {}
    for k in range(num_batches(n, cfg.batch_size)):
        for key, ex in batch_examples(gen.generate(k, cfg.batch_size), split, k,
                                      cfg.batch_size, n):
            out[key] = ser.serialize_example(builder.info.features.encode_example(ex))
    return out


@pytest.fixture(scope="module")
def lens_builds(tmp_path_factory):
    """The config built plain and with Beam (recording the batches the Beam workers drew)."""
    root = tmp_path_factory.mktemp("lens_beam")
    calls = []
    real = _beam.batch_examples

    def spy(out, split, k, *args):
        calls.append((split, k))
        return real(out, split, k, *args)

    plain = LensSimulations(config=LENS_CONFIG, data_dir=str(root / "plain"))
    plain.download_and_prepare()
    assert calls == []                                   # the plain build uses no Beam
    _beam.batch_examples = spy
    try:
        viabeam = LensSimulations(config=LENS_CONFIG, data_dir=str(root / "beam"))
        viabeam.download_and_prepare(download_config=_beam_download_config())
    finally:
        _beam.batch_examples = real
    return plain, viabeam, calls


def test_lens_simulations_beam_equals_plain(lens_builds):
    plain, viabeam, calls = lens_builds
    # the Beam workers drew every batch once (in no particular order)
    assert sorted(calls) == [("train", 0), ("train", 1), ("train", 2),
                             ("validation", 0), ("validation", 1)]
    for b in (plain, viabeam):
        assert {k: v.num_examples for k, v in b.info.splits.items()} == \
            {"train": 7, "validation": 5}
    for split, n in (("train", 7), ("validation", 5)):
        expected = _expected_records(plain, split, n)
        assert len(set(expected.values())) == n            # all examples differ
        key_of = {rec: key for key, rec in expected.items()}
        rec_plain, rec_beam = _records(plain, split), _records(viabeam, split)
        # byte-for-byte the same records (built in this process), each the generator's
        # example of its index, in the same order
        assert sorted(rec_plain) == sorted(rec_beam) == sorted(expected.values())
        assert [key_of[r] for r in rec_plain] == [key_of[r] for r in rec_beam]
        # decoded: the same arrays, key by key
        dec = {}
        for name, b in (("plain", plain), ("beam", viabeam)):
            exs = list(tfds.as_numpy(b.as_dataset(split=split, shuffle_files=False)))
            by_image = {e["image"].tobytes(): e for e in exs}
            assert len(by_image) == n
            dec[name] = by_image
        gen = _generator(plain, split)
        for k in range(num_batches(n, 3)):
            for key, ex in batch_examples(gen.generate(k, 3), split, k, 3, n):
                a, b = dec["plain"][ex["image"].tobytes()], dec["beam"][ex["image"].tobytes()]
                flat_ex = tf.nest.flatten(ex)
                for x, y, z in zip(tf.nest.flatten(a), tf.nest.flatten(b), flat_ex):
                    np.testing.assert_array_equal(x, y, err_msg=key)
                    np.testing.assert_array_equal(x, z, err_msg=key)
    # and the comparison can fail: another split (seed) gives other records
    assert set(_records(plain, "train")).isdisjoint(_records(viabeam, "validation"))


@pytest.mark.slow
def test_lens_simulations_beam_worker_processes(tmp_path):
    """Two DirectRunner worker processes (each compiles and draws its batches): the same
    records as the generator's in this process, up to protobuf's map-entry order."""
    opts = beam.options.pipeline_options.PipelineOptions(flags=[
        "--runner=DirectRunner", "--direct_num_workers=2",
        "--direct_running_mode=multi_processing"])
    b = LensSimulations(config=LENS_CONFIG, data_dir=str(tmp_path))
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(beam_options=opts))
    for split, n in (("train", 7), ("validation", 5)):
        expected = {_canonical(r): key
                    for key, r in _expected_records(b, split, n).items()}
        got = _records(b, split, canonical=True)
        assert sorted(got) == sorted(expected)
        assert len(set(got)) == n


def test_lens_example_depends_only_on_its_index():
    """Batch ``k`` drawn alone, in reverse order, by a fresh generator, equals batch ``k``
    of a forward pass; a different batch index gives a different example."""
    from tfstronglens.simulation import LensDatasetGenerator

    cfg = LENS_CONFIG.simulation_config(SPLIT_SEEDS["train"])
    fwd = [LensDatasetGenerator(cfg).generate(k, 3) for k in range(3)]
    gen = LensDatasetGenerator(cfg)
    for k in (2, 0, 1):
        out = gen.generate(k, 3)
        for x, y in zip(tf.nest.flatten(out), tf.nest.flatten(fwd[k])):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(fwd[0]["image"], fwd[1]["image"])


def test_beam_switch_and_errors(tmp_path):
    assert not beam_requested(None)
    assert not beam_requested(tfds.download.DownloadConfig())
    assert beam_requested(_beam_download_config())
    assert beam_requested(tfds.download.DownloadConfig(beam_runner="DirectRunner"))
    for bad in (123, ["runner=DirectRunner", 5], "", " , "):
        with pytest.raises(ValueError, match="beam_pipeline_options"):
            build("hst_acs_f814w-cdm-32-tiny", tmp_path, beam_pipeline_options=bad)
    with pytest.raises(ValueError, match="unknown config"):
        build("no-such-config", tmp_path, beam_pipeline_options="runner=DirectRunner")
    # flags as `tfds build --beam_pipeline_options` takes them, or as a list
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    for flags in ("runner=DirectRunner,direct_num_workers=3",
                  ["--runner=DirectRunner", "--direct_num_workers=3"]):
        opts = pipeline_options_from_flags(flags)
        assert opts.view_as(StandardOptions).runner == "DirectRunner"
        assert opts.view_as(DirectOptions).direct_num_workers == 3
    assert not list(tmp_path.iterdir())                    # nothing was built
    with pytest.raises(ValueError, match="num_examples"):
        _beam.LensSimulationExamples(TINY.simulation, 1, "train", 4, 0)
    with pytest.raises(ValueError, match="batch_size"):
        _beam.LensSimulationExamples(TINY.simulation, 1, "train", 0, 4)
    # the registered 10^6-image config: the default config's simulation
    big = [c for c in LensSimulations.BUILDER_CONFIGS if c.name == "hst_acs_f814w-none-64-1m"][0]
    default = [c for c in LensSimulations.BUILDER_CONFIGS if c.name == "hst_acs_f814w-none-64"][0]
    assert big.simulation == default.simulation
    assert big.num_train + big.num_validation + big.num_test == 10**6


# ------------------------------------------------------------- cosmos_galaxies
def test_cosmos_galaxies_beam_equals_plain(tmp_path):
    from test_galaxy_datasets import _cosmos_config, write_test_catalog

    from tfstronglens.datasets.cosmos_galaxies import CosmosGalaxies

    write_test_catalog(tmp_path / "manual", pixel_scale=0.045, noise_variance=True)
    cfg = _cosmos_config(degrade_snr=True)       # resampled, noise-degraded: seeded noise
    builds = {}
    for name, dl in (("plain", tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual"))),
                     ("beam", _beam_download_config(manual_dir=str(tmp_path / "manual")))):
        b = CosmosGalaxies(config=cfg, data_dir=str(tmp_path / name))
        b.download_and_prepare(download_config=dl)
        builds[name] = b
    splits = {k: v.num_examples for k, v in builds["plain"].info.splits.items()}
    assert splits == {k: v.num_examples for k, v in builds["beam"].info.splits.items()}
    assert set(splits) == {"train", "validation"} and sum(splits.values()) >= 5
    for split in splits:
        rp, rb = _records(builds["plain"], split), _records(builds["beam"], split)
        assert len(set(rp)) == splits[split]
        assert rp == rb                                    # same bytes, same order
        dec = [sorted(tfds.as_numpy(b.as_dataset(split=split, shuffle_files=False)),
                      key=lambda e: int(e["id"])) for b in builds.values()]
        for ea, eb in zip(*dec):
            assert set(ea) == set(eb)
            for k in ea:
                np.testing.assert_array_equal(ea[k], eb[k])


@pytest.mark.slow
def test_cosmos_galaxies_beam_none_pass(tmp_path):
    """A Beam build in which no galaxy passes fails like the plain one."""
    from test_galaxy_datasets import _cosmos_config, write_test_catalog

    from tfstronglens.datasets.cosmos_galaxies import CosmosGalaxies

    write_test_catalog(tmp_path / "manual", pixel_scale=0.045, noise_variance=True)
    bad = _cosmos_config(name="none-pass", snr_range=(1e4, 2e4))
    for name, dl in (("plain", tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual"))),
                     ("beam", _beam_download_config(manual_dir=str(tmp_path / "manual")))):
        b = CosmosGalaxies(config=bad, data_dir=str(tmp_path / name))
        with pytest.raises(Exception, match="none of the"):
            b.download_and_prepare(download_config=dl)
