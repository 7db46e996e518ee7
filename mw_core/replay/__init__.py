"""Replay room: recorded kline files, the local Binance-protocol server and `mw replay`."""
