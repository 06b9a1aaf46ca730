from zoo.cli import script

script("visualize")
