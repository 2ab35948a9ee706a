"""``python -m tfstronglens.datasets CONFIG [--data_dir DIR] [--beam_pipeline_options OPTS]``:
build a ``lens_simulations`` config with TFDS (without the ``tfds`` CLI), optionally with
Apache Beam (``OPTS`` as for ``tfds build``, e.g. ``runner=DirectRunner,direct_num_workers=2``)."""

import argparse
import sys

from .lens_simulations import _CONFIGS, build


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tfstronglens.datasets",
        description="Build a lens_simulations config with TFDS.")
    parser.add_argument("config", choices=[c.name for c in _CONFIGS], metavar="CONFIG",
                        help="config name, e.g. euclid_vis-cdm-64")
    parser.add_argument("--data_dir", default=None, help="TFDS data directory")
    parser.add_argument("--beam_pipeline_options", default=None,
                        help="build with Apache Beam: comma-separated pipeline flags, e.g. "
                             "runner=DirectRunner,direct_num_workers=2")
    args = parser.parse_args(argv)
    try:
        b = build(args.config, args.data_dir, args.beam_pipeline_options)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    print(f"built {b.info.full_name} in {b.data_dir}: "
          f"{ {k: v.num_examples for k, v in b.info.splits.items()} }")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
