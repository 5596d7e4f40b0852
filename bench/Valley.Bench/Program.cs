using Valley.Bench;

// Valley's benchmarks, run by hand: dotnet run -c Release --project bench/Valley.Bench -- <name> [options]
// Every ratio is measured side by side in one run (interleaved repetitions, median), never asserted in tests.
return Runner.Main(args);
