"""A student trainer in 20 lines: learn from a topic's pseudo-labels, ack after each step.

    python -m pseudostream.clients.examples.train_student --target 127.0.0.1:50051 --topic digits
"""

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pseudostream.clients.dataset import PseudoLabelDataset
from pseudostream.models.cnn import DigitsCNN


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--topic", default="digits")
    p.add_argument("--max-records", type=int, default=None)
    args = p.parse_args()
    dataset = PseudoLabelDataset(args.target, args.topic, group="students", consumer="example",
                                 idle_timeout_s=5.0, max_records=args.max_records)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen = 0
    for x, y, w in DataLoader(dataset, batch_size=32):
        loss = (F.cross_entropy(model(x)[0], y, reduction="none") * w).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        dataset.commit()  # ack the labels this step trained on
        seen += len(y)
    dataset.close()
    print(f"trained on {seen} pseudo-labels")


if __name__ == "__main__":
    main()
