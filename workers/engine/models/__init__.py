"""The model a correction works on: the MLP as a frozen feature extractor plus a logistic head
(``head_model``, with the device choice), and building/training the allow-listed MLP from scratch
(``training``, used by the examples, the network methods and the retraining baselines).
"""
