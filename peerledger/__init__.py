"""peerledger, the application: command line, configuration, devnet launcher, local HTTP API."""
