"""The pure domain of peerledger: encoding, keys, transactions, blocks, state, consensus.

Nothing here does I/O, starts threads or touches files and sockets: every function takes
values and returns values, so the rules can be tested alone and run the same on every node.
"""
