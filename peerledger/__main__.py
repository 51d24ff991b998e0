"""`python -m peerledger` is the `peerledger` command."""

import sys

from peerledger.cli import main

if __name__ == "__main__":
    sys.exit(main())
