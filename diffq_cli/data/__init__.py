"""Datasets and loaders: the embedded digits set, torchvision sets, image folders, idx files."""
