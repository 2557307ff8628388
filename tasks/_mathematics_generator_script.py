"""Write one v1.0 file (one module, one difficulty) with DeepMind's generator, seeded.

Runs in the generator's own interpreter (mathematics_dataset 1.0.1, sympy 1.4, numpy < 1.24), not in
this project's: it imports nothing from the project. PYTHONHASHSEED must be set by the caller
(tasks/mathematics_generate.py), since it has to be fixed before the interpreter starts.

    python _mathematics_generator_script.py MODULE REGIME COUNT SEED OUTPUT
"""

import os
import random
import sys

import numpy
from absl import flags
from mathematics_dataset import generate


def main(module, regime, count, seed, output):
    flags.FLAGS(["generate", "--filter=" + module])  # the generator reads its module filter from absl flags
    random.seed(seed)
    numpy.random.seed(seed)
    generate.init_modules(train_split=True)
    if module not in generate.filtered_modules[regime]:
        sys.exit("module %s not found in %s; known: %s" % (module, regime, ", ".join(generate.filtered_modules[regime])))
    sample = generate.filtered_modules[regime][module]
    temporary = output + ".partial"
    with open(temporary, "w") as text_file:
        for _ in range(count):
            problem, _ = generate.sample_from_module(sample)
            text_file.write(str(problem.question) + "\n")
            text_file.write(str(problem.answer) + "\n")
    os.replace(temporary, output)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
