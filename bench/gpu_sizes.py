"""The sizes bench/gpu.py measures at, on a GPU and, small, on a CPU; its check uses the same.

    from bench.gpu_sizes import CPU, GPU
"""

GPU = {"backbone": "resnet18", "size": 224, "batch": 256, "images": 20480, "epochs": 3,
       "bare_size": 128, "bare_batch": 256, "packed_size": 32, "packed_batch": 128,
       "packed_images": 40960, "packed_trials": 4, "search_data": "demo:900",
       "search_size": 128, "search_samples": 16, "search_epochs": 5, "cpus_per_trial": 3,
       "gpus_per_trial": 0.25, "compile": True}
CPU = {"backbone": "test_resnet", "size": 32, "batch": 32, "images": 128, "epochs": 2,
       "bare_size": 32, "bare_batch": 32, "packed_size": 32, "packed_batch": 32,
       # two packed trials, not four: on a CPU each is a process importing torch, and packing
       # says nothing of a GPU there
       "packed_images": 128, "packed_trials": 2, "search_data": "demo:8", "search_size": 32,
       "search_samples": 2, "search_epochs": 2, "cpus_per_trial": 0.5, "gpus_per_trial": 0.0,
       # torch.compile on a CPU takes about 40 s here and says nothing of a GPU's speed;
       # tests/test_gpu_path.py proves compiling on a CPU
       "compile": False}
