"""The ``obfgrad`` command.

    obfgrad info        what backend is active (native extension, OpenMP threads, CUDA/CuPy)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence


def _info(_args: argparse.Namespace) -> int:
    from obfgrad import backend_info

    print(json.dumps(backend_info(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="obfgrad", description="Adaptive attacks on adversarial-example defenses.")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="show the active backend (native kernels, threads, CUDA)")
    info.set_defaults(handler=_info)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
