"""Write a synthetic stream: python replay_data/generate.py --keys 20 --windows 1500 --out replay_data/synthetic.parquet"""
import sys

from streamseq.synthetic import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
