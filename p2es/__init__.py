"""p2es: live 12-lead ECG reconstruction from wearable PPG.

Packages follow the data flow: ``wearable`` (simulator, real-data readers) -> ``ingest`` ->
``engine`` -> ``sink`` -> ``alerts`` -> ``dashboards``.  This package holds what they share:
lead conventions, errors, signal measurement, plotting and the ``p2es`` command line.
"""

__version__ = "0.1.0"
