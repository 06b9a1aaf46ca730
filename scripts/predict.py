from zoo.cli import script

script("predict")
