"""Audio front-end: log-mel features, resampling and WAV input/output.

``features`` holds the Whisper-like log-mel spectrogram (16 kHz, 10 ms hop),
the mel filterbank and resampling helpers; ``io`` reads and writes WAV files
with clear errors.  The speech codec (waveform <-> 25 Hz speech tokens) lives
in :mod:`a2llm_ros.model.speech_codec`.
"""
