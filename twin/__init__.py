"""The digital twin of the instrument: sky, optics, detector, artifacts, anomalies, truth."""
