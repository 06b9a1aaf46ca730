from zoo.cli import script

script("evaluate")
