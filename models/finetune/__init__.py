"""Finetuning BLIP captioners and filters the CapFilt way (``curation finetune``).

``losses`` holds the LM, ITC and ITM-with-hard-negatives losses, ``data`` reads and decodes
training pairs, ``train`` runs the loops, evaluates and saves, ``model_card`` writes the
README.md beside the weights, ``cli`` is the command.
"""
