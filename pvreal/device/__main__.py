"""`python -m pvreal.device run|init ...`: the device commands without the rest of the CLI
(a faster start, which the crash tests and the bench restart many times)."""

import sys

from pvreal import cli_device
from shared.cli_support import run


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="pvreal")
    cli_device.register(parser.add_subparsers(dest="command", required=True))
    return run(parser, ["device", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
