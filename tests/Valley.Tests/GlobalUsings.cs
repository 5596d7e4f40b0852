global using TorchSharp;

// LibTorch's generator and thread settings are process-wide: tests that build models or depend on bit-exact results must
// not interleave with others, so the suite runs one test at a time (each test uses both cores through LibTorch).
[assembly: Xunit.CollectionBehavior(DisableTestParallelization = true)]
