"""Audio at the bottom of the house: file I/O and resampling, log-mel features and pre-emphasis, external mel files,
and pictures of mels. Imports nothing of distill but `config` and `errors`."""
