"""The example as a Flower app: FedAvg on the digits, every round a secagg secure round.

``client_app`` and ``server_app`` are the app's two components (``pyproject.toml`` names
them for ``flwr run``); ``task`` is the model, the data and the training; ``failures`` makes
chosen nodes fail at chosen stages, to watch a round survive its dropouts.
"""
