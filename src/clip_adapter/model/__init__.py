"""Use an adapted model: :class:`AdaptedClassifier` (save, load, predict, evaluate), its image inputs and the
resumable JSON-lines stream of predictions.

    classifier.py   AdaptedClassifier: backbone + fitted method, one folder to save and load
    card.py         the model card written next to it
    images.py       image decoding, unreadable files as error records, files/folders/globs -> paths
    stream.py       predict_to_jsonl: one line per image as it is done, resumable
"""
from .card import model_card
from .classifier import AdaptedClassifier
from .images import expand_images
from .stream import predict_to_jsonl

__all__ = ["AdaptedClassifier", "expand_images", "predict_to_jsonl", "model_card"]
