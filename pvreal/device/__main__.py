"""`python -m pvreal.device run|init ...`: the device commands without the rest of the CLI
(a faster start, which the crash tests and the bench restart many times)."""

import sys

from pvreal.cli import build_parser, run


def main() -> int:
    return run(build_parser(groups=("pvreal.cli.device",)), ["device", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
