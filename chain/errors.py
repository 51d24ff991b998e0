"""Errors that say what is wrong and whose fault it is.

Every rejection carries a stable `Code`. The code is what the HTTP API returns and what the
network layer uses to decide whether the peer that sent the object is penalised: a peer that
sends a badly signed transaction is at fault; a peer that relays a transaction whose nonce
was used a second ago is not.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    """Stable error codes. The value is the string clients see; never rename one."""

    # (value, penalise the peer that sent it)
    BAD_ENCODING = ("bad_encoding", True)
    OVERSIZE = ("oversize", True)
    BAD_SIGNATURE = ("bad_signature", True)
    BAD_ADDRESS = ("bad_address", False)
    BAD_AMOUNT = ("bad_amount", True)
    WRONG_NONCE = ("wrong_nonce", False)
    INSUFFICIENT_FUNDS = ("insufficient_funds", False)
    FEE_TOO_LOW = ("fee_too_low", False)
    MEMPOOL_FULL = ("mempool_full", False)
    DUPLICATE = ("duplicate", False)
    UNKNOWN_PARENT = ("unknown_parent", False)
    BAD_BLOCK = ("bad_block", True)
    BAD_MERKLE_ROOT = ("bad_merkle_root", True)
    BAD_PROOF = ("bad_proof", True)
    BAD_DIFFICULTY = ("bad_difficulty", True)
    BAD_HEIGHT = ("bad_height", True)
    TIME_TOO_OLD = ("time_too_old", True)
    TIME_TOO_NEW = ("time_too_new", False)  # may become valid later: our clock may lag
    REORG_TOO_DEEP = ("reorg_too_deep", False)
    INVALID_ANCESTOR = ("invalid_ancestor", True)
    BAD_GENESIS = ("bad_genesis", False)
    BAD_EVIDENCE = ("bad_evidence", True)
    # A Proof of Stake header whose signer holds no stake in our current state: refused
    # ahead of its block (a cheap forgery otherwise), but not penalised: the stake may come
    # from a branch we have not seen.
    NOT_ELIGIBLE = ("not_eligible", False)

    def __init__(self, text: str, penalise: bool) -> None:
        self.text = text
        self.penalise = penalise

    def __str__(self) -> str:
        return self.text


class ChainError(Exception):
    """A rule was broken by the object under test. `code` says which rule."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code.text}: {message}")
        self.code = code
        self.message = message


class DecodeError(ChainError):
    """Bytes that are not the one canonical encoding of a valid object."""

    def __init__(self, message: str, code: Code = Code.BAD_ENCODING) -> None:
        super().__init__(code, message)
