from zoo.cli import script

script("benchmark")
