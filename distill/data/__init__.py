"""Corpora (demo, LJSpeech layout, folders, speakers and voices), datasets and mel caches, the data stage,
and the builder of the bundled multi-voice demo corpus. Imports `distill.audio`."""
