"""Markets room: pure market logic (window math, detector, codecs, Binance frames, the one analysis path). No I/O."""
