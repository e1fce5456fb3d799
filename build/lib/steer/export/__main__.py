"""``python -m steer.export RUN_DIR --m M --to FORMAT --out DIR``: see ``steer.export``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from steer.export import EXPORTS, ExportError, export
from steer.io.artifacts import CorruptArtifact


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m steer.export", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a trained run directory (intervention.safetensors, config.yaml)")
    parser.add_argument("--m", type=float, required=True, help="the multiplier to export at (folded in)")
    parser.add_argument(
        "--to", required=True, choices=list(EXPORTS), help="; ".join(f"{k}: {v.summary}" for k, v in EXPORTS.items())
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the artifact into (empty or new)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="--out may hold an earlier export: replace steer's files there (files steer did not write are kept)",
    )
    args = parser.parse_args(argv)
    try:
        paths = export(args.run_dir, args.m, args.to, args.out, overwrite=args.overwrite)
    except (ExportError, CorruptArtifact, ValueError, OSError) as err:  # bad input, a damaged or unreadable run
        print(f"steer.export: {err}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
