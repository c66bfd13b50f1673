"""The ``tidings`` command (``main.py``) and its local-development state: the ``tidings init`` /
``tidings run`` folder (``localdev.py``) and the embedded Kafka-compatible broker
(``localbroker.py``).
"""
