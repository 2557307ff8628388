"""The paper's own words, quoted, for the report's paper column (Csordás et al., ICLR 2021).

Every Quote is verbatim from the paper (LaTeX written plainly: `$\\beta = 10^{-4}$` as
"β = 10^-4"), with the figure, table or section it comes from; tests/analysis/test_paper_quotes.py
finds each one in the paper's text. Our reading of our own numbers never goes here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Quote:
    text: str  # the paper's words
    source: str  # "Fig. 3", "Sec. 3.3", "App. C.3", "Table 1"

    def __str__(self) -> str:
        return f'"{self.text}" ({self.source})'


# -- arithmetic (Sections 3.1-3.2, Appendices C.2-C.4) -------------------------------------------------
FIG1_IO_SHARING = Quote("There is more sharing in the input and output layers and less in the hidden layers (Fig. 1)",
                        "Sec. 3.1")
FIG2_INDEPENDENT = Quote("We test the resulting network on pair 2, where the performance decreases only slightly, "
                         "confirming that they are independent (Fig. 2)", "Sec. 3.2")
FIG7_THRESHOLD = Quote("In general we find that l_i concentrates at either 0 or 1 and so thresholding is safe "
                       "(see also Fig. 7)", "Sec. 2, footnote 1")
FIG7_LOW_VALUES = Quote("Values < 0.0002 (bottom 10% of the first bin) are removed from the calculation", "Fig. 7")
FIG8_CHOSEN = Quote("The red line and the star indicate the value chosen for our experiments.", "Fig. 8")
FIG8_BETA = Quote("Mask training uses a learning rate of 10^-2 and β = 10^-4 for regularization.", "App. C.3")
FIG8_HEURISTIC = Quote("Then, we reduce α slightly until the performance is adequate, e.g. > 95% of the original "
                       "performance", "App. C.2")
FIG8_INSENSITIVE = Quote("The network is not very sensitive to the exact choice of β", "Fig. 8")
FIG9_CHANGES = Quote("the percentage of shared weights still changes when increasing the network size", "App. C.3")
FIG9_UNDERFITTING = Quote("Note that underfitting NNs tend to share more weights.", "App. C.2")
FIG10_INVERTED = Quote("inverted masks do not perform well, showing that the separation of the modules is limited",
                       "App. C.3")
FIG11_RATIO = Quote("the multiplication uses 3.8 times more weights than the addition (Fig. 11)", "Sec. 3.1")
FIG12_BEHAVIOUR = Quote("The FNN ignores the operator specification and performs the one corresponding to the mask; "
                        "in contrast, the LSTM tends to perform invalid operations.", "Fig. 12")
FIG13_ZERO = Quote("The first and last layers have zero shared weights.", "Fig. 13")
FIG13_LOW = Quote("weight sharing is low (Fig. 13)", "Sec. 3.2")
FIG14_NO_IMPROVEMENT = Quote("Compared to Fig. 2, no improvement is apparent.", "Fig. 14")

# -- permuted MNIST (Section 3.3, Appendix C.5) -----------------------------------------------------------
FIG3_OUTPUT = Quote("The last layer has the lowest capacity, filling up first, forcing subsequent runs to share "
                    "weights.", "Fig. 3")
FIG3_LITTLE_SHARING = Quote("we observed only little weight sharing when sufficient free space available (Fig. 3). "
                            "Only once all the capacity is filled, weights become shared.", "Sec. 3.3")
FIG15_OUTPUT = Quote("The last layer has the lowest capacity, filling up first, forcing the subsequent runs to share "
                     "weights.", "Fig. 15")
FIG15_FIRST_LAYER = Quote("Moreover, the sharing in the first, permuted layer also increases, which should not be "
                          "the case.", "Fig. 15")
FIG15A_UNIQUE = Quote("While we observed that this improved sharing (as expected), more than half of the weights "
                      "remained unique (See Fig. 15).", "Sec. 3.3")
FIG15B_MORE = Quote("Decreasing the probability of new weights forces increased sharing, but it is far from the "
                    "ideal 100%.", "Fig. 15")
FROZEN = Quote("we train masks and weights simultaneously on a single task and freeze the occupied weights",
               "Sec. 3.3")

# -- SCAN and the Mathematics Dataset (Section 4, Appendix C.6) -----------------------------------------
FIG4A_GAP = Quote("Indeed, our experimental results demonstrate precisely this as can be seen from the large "
                  "generalization gap in Fig. 4a.", "Sec. 4")
FIG4B_JUMP = Quote('Almost half of the weights corresponding to "I_JUMP" are removed (Fig. 4b)', "Sec. 4")
FIG16_PRETRAINING = Quote("Figure 16 shows that this process significantly improves the performance of all splits, "
                          "compared to when the network is directly trained on the corresponding train split.",
                          "App. C.6.1")
FIG16_MASK = Quote("However, the performance degrades significantly when removing weights that are unnecessary for "
                   "the given training split.", "App. C.6.1")
FIG5_DROP = Quote('In Fig. 5 a consistent performance drop can be observed when applying the inferred subnetwork on '
                  'the "hard" split using a mask trained on the "easy" split.', "Sec. 4")
FIG5_SEEDS = Quote("5 seeds/task.", "Fig. 5")

# -- CIFAR-10 (Section 5, Appendices B.1, C.7) --------------------------------------------------------
FIG6A_SIMPLE = Quote("the decrease in performance for each of the classes is substantial, ranging from 40 to 60%",
                     "App. C.7.1")
FIG6A_DROPOUT = Quote("adding dropout causes a higher degradation in the class performance when the class-exclusive "
                      "feature detectors are removed (roughly 30%-40% higher drop per class)", "App. C.7.2")
FIG6A_RESNET = Quote("the performance drop per class is even more dramatic than in the simple CNN case, reaching "
                     "almost 100%", "App. C.7.3")
FIG6B_SMALL = Quote("Only a small drop in performance is observed for non-target classes", "Sec. 5")
FIG18_ACCURACY = Quote("It can be seen that performance without dropout is a few percent lower, as expected. "
                       "ResNet-110 has a significantly better performance in all classes.", "Fig. 18")
RESNET_ACCURACY = Quote("which achieves competitive 93% validation accuracy", "App. C.7.3")
FIG19_AIRPLANE = Quote('"Airplane" is confused with "bird" and "ship", which is likely due to having a similar blue '
                       'background.', "App. C.7.1")
FIG19_CAT = Quote('Classes "cat" and "dog" tend to be confused with each other', "App. C.7.1")
FIG19_TRUCK = Quote('"Truck" and "car" are highly related', "App. C.7.1")
IOU = Quote("We found that the mean IoU is 93.26 ± 0.96%", "App. B.1")
