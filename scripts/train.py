from zoo.cli import script

script("train")
