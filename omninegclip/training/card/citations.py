"""The card's Citation section: BibTeX of the method, of CLIP, and of each benchmark the card's
results were measured on.

Public surface: `CITATIONS` (key -> (what it is, BibTeX)), `citations_markdown(benchmark_types)`.
"""

from __future__ import annotations

CITATIONS = {
    # key: (what it is, BibTeX). Fields that could not be verified are left out and said so.
    "omninegclip": (
        "the method",
        """@misc{omninegclip,
  title         = {Omni-NegCLIP: Enhancing CLIP with Front-Layer Contrastive Fine-Tuning for Comprehensive \
Negation Understanding},
  note          = {author list: see the arXiv page},
  eprint        = {2603.29258},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2603.29258}
}""",
    ),
    "clip": (
        "the CLIP architecture",
        """@inproceedings{radford2021clip,
  title     = {Learning Transferable Visual Models From Natural Language Supervision},
  author    = {Radford, Alec and Kim, Jong Wook and Hallacy, Chris and Ramesh, Aditya and Goh, Gabriel and \
Agarwal, Sandhini and Sastry, Girish and Askell, Amanda and Mishkin, Pamela and Clark, Jack and \
Krueger, Gretchen and Sutskever, Ilya},
  booktitle = {Proceedings of the 38th International Conference on Machine Learning (ICML)},
  year      = {2021},
  eprint    = {2103.00020},
  archivePrefix = {arXiv}
}""",
    ),
    "ccneg": (
        "CC-Neg (CoN-CLIP)",
        """@inproceedings{singh2025conclip,
  title     = {Learning the Power of ``No'': Foundation Models with Negations},
  author    = {Singh, Jaisidh and Shrivastava, Ishaan and Vatsa, Mayank and Singh, Richa and Bharati, Aparna},
  booktitle = {Proceedings of the Winter Conference on Applications of Computer Vision (WACV)},
  year      = {2025},
  pages     = {7991--8001},
  eprint    = {2403.20312},
  archivePrefix = {arXiv}
}""",
    ),
    "negbench": (
        "NegBench",
        """@misc{alhamoud2025negbench,
  title         = {Vision-Language Models Do Not Understand Negation},
  author        = {Alhamoud, Kumail and Alshammari, Shaden and Tian, Yonglong and Li, Guohao and Torr, Philip and \
Kim, Yoon and Ghassemi, Marzyeh},
  year          = {2025},
  eprint        = {2501.09425},
  archivePrefix = {arXiv}
}""",
    ),
    "negrefcocog": (
        "NegRefCOCOg (NegationCLIP)",
        """@misc{park2025negationclip,
  title         = {Know ``No'' Better: A Data-Driven Approach for Enhancing Negation Awareness in CLIP},
  author        = {Park, Junsung and Lee, Jungbeom and Song, Jongyoon and Yu, Sangwon and Jung, Dahuin and \
Yoon, Sungroh},
  year          = {2025},
  eprint        = {2501.10913},
  archivePrefix = {arXiv}
}""",
    ),
    "valse": (
        "VALSE",
        """@inproceedings{parcalabescu2022valse,
  title     = {{VALSE}: A Task-Independent Benchmark for Vision and Language Models Centered on Linguistic Phenomena},
  author    = {Parcalabescu, Letitia and Cafagna, Michele and Muradjan, Lilitta and Frank, Anette and \
Calixto, Iacer and Gatt, Albert},
  booktitle = {Proceedings of the 60th Annual Meeting of the Association for Computational Linguistics \
(Volume 1: Long Papers)},
  pages     = {8253--8280},
  year      = {2022},
  doi       = {10.18653/v1/2022.acl-long.567}
}""",
    ),
    "sugarcrepe": (
        "SugarCrepe",
        """@misc{hsieh2023sugarcrepe,
  title  = {SugarCrepe: Fixing Hackable Benchmarks for Vision-Language Compositionality},
  author = {Hsieh, Cheng-Yu and Zhang, Jieyu and others},
  note   = {full author list and venue: see the repository},
  year   = {2023},
  url    = {https://github.com/RAIVNLab/sugar-crepe}
}""",
    ),
}
# The eval tasks' model-index `dataset.type` (eval/tasks.py) -> the CITATIONS key of their benchmark.
_BENCHMARK_CITATION = {
    "ccneg": "ccneg",
    "negbench": "negbench",
    "negrefcocog": "negrefcocog",
    "valse": "valse",
    "sugarcrepe": "sugarcrepe",
}


def citations_markdown(benchmark_types: list[str]) -> str:
    """The card's Citation section body: the method, CLIP, and each benchmark evaluated on."""
    keys = ["omninegclip", "clip"] + list(
        dict.fromkeys(_BENCHMARK_CITATION[kind] for kind in benchmark_types if kind in _BENCHMARK_CITATION)
    )
    lines = []
    for key in keys:
        what, bibtex = CITATIONS[key]
        lines += [f"{what[0].upper()}{what[1:]}:", "", "```bibtex", bibtex, "```", ""]
    return "\n".join(lines).rstrip() + "\n"
