"""Print a text file a word at a time, the way a language model streams its reply.

    python examples/fake_llm.py examples/tavern.txt | broadcaster say lobby --stream --token <producer token>

Stands in for a real model command (anything that writes its reply to standard output as it is
generated works the same way).
"""

import argparse
import re
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--words-per-second", type=float, default=8, help="how fast the 'model' writes (8)")
    args = parser.parse_args()
    with open(args.file, encoding="utf-8") as f:
        text = f.read()
    for word in re.findall(r"\s*\S+", text) + [text[len(text.rstrip()) :]]:
        sys.stdout.write(word)
        sys.stdout.flush()  # a pipe would otherwise hold it back until the buffer fills
        time.sleep(1 / args.words_per_second)


if __name__ == "__main__":
    main()
