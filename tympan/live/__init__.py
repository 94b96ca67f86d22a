"""Listening live: audio that does not stop, turned into events, a store and alerts.

- :mod:`.store`: the SQLite store of events (and optionally window rows): WAL, a schema
  version, every event committed when it closes, so a killed listener's store reopens intact.
- :mod:`.sources`: where live audio comes from (an ffmpeg subprocess, raw PCM on stdin, a
  watched folder, a sound card), as blocks of float32 samples at the model's rate.
- :mod:`.listener`: blocks -> windows -> the one prediction path -> the one event definition
  (:mod:`tympan.inference.events`), with lag accounting and dropped-window counters.
- :mod:`.alerts`: TOML rules over closed events; webhook / command / MQTT sinks on background
  threads; clips of the audio around each alert in a size-bounded folder.
"""
