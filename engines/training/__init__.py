"""Training, evaluation and fine-tuning of the stamp classifier (the ``train`` extra).

Sits above the engine's serving side and above ``edge``: it renders twin frames, detects and
cuts them with the node's own detector and stamp contract, trains with torch and writes an
engine folder that the serving side loads. Nothing of the node imports it.
"""
