from zoo.cli import script

if __name__ == "__main__":   # worker processes (spawn) import this file: run once
    script("train")
