"""A publish, from either API or a dead-letter copy, to the broker.

- ``publisher.py``: validate → wrap → scope-check → produce; every failure as a Dapr error;
- ``scoping.py``: the components' topic scoping (also used when subscribing).
"""
