from zoo.cli import script

script("docs")
