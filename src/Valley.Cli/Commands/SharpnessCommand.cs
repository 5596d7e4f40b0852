using Valley.IO;
using System.CommandLine;
using Spectre.Console;
using Valley.Models;
using Valley.Reporting;
using Valley.Runs;
using Valley.Sharpness;

namespace Valley.Cli.Commands;

/// <summary><c>valley sharpness</c>: the published sharpness and flatness measures, each with its parameters and uncertainty.</summary>
public static class SharpnessCommand
{
    /// <summary>
    /// What sharpness.json holds, written after every result: the run, its inputs by content, the results so far, and which
    /// measures have finished (their results are the first <see cref="FinishedResults"/>). A rerun of identical inputs into
    /// the same folder keeps the finished measures and runs the rest; a run of other inputs starts afresh.
    /// </summary>
    public sealed record Output(string Model, string? Weights, string Data, long Examples, long Seed, RunInputs Inputs, List<string> Finished, int FinishedResults,
        List<SharpnessResult> Results);

    // Shown in sharpness.json, left out of the terminal table to keep it readable.
    static readonly HashSet<string> Hidden = ["tolerance", "depth", "target_drop", "batch_size", "examples", "subspace_dimension", "inputs", "neurons"];
    static string Short(string k) => k switch { "epsilon" => "ε", "rho" => "ρ", "samples" => "n", "steps" => "steps", "ascent_steps" => "steps", _ => k };

    public static Command Build()
    {
        var o = new CommonOptions();
        var measures = new Option<string>("--measures") { Description = $"Comma-separated measures or 'all': {string.Join(", ", SharpnessSuite.All)}", DefaultValueFactory = _ => "all" };
        var eps = new Option<string>("--epsilon") { Description = "Keskar ε values, comma-separated", DefaultValueFactory = _ => "1e-3,5e-4" };
        var rho = new Option<double?>("--rho") { Description = "Radius ρ for SAM, worst-case and average-case measures (default: each measure's)" };
        var steps = new Option<int?>("--steps") { Description = "Ascent steps (default 20)" };
        var samples = new Option<int?>("--samples") { Description = "Monte-Carlo samples (average-case 20 per batch, PAC-Bayes 10 per σ)" };
        var outDir = new Option<string>("--out", "-o") { Description = "Output folder for sharpness.json", DefaultValueFactory = _ => "out/sharpness" };
        var cmd = new Command("sharpness", "Sharpness and flatness measures: Keskar ε-sharpness, SAM one-step, worst-/average-case (plain, adaptive), PAC-Bayes, worst-case flatness, relative flatness, Fisher proxies");
        o.AddTo(cmd);
        foreach (var opt in new Option[] { measures, eps, rho, steps, samples, outDir }) cmd.Options.Add(opt);
        cmd.SetAction((p, ct) =>
        {
            var epsilons = CommonOptions.Group.Agree(() =>
            {
                var list = p.GetValue(eps)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(s =>
                    double.TryParse(s, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var v) && v > 0 && double.IsFinite(v) ? v
                    : throw new ValleyException($"--epsilon: '{s}' is not a positive finite number")).ToArray();
                if (p.GetValue(rho) is { } r && (!(r > 0) || !double.IsFinite(r))) throw new ValleyException($"--rho: must be a positive finite number, got {r}");
                if (p.GetValue(steps) is { } st && st < 1) throw new ValleyException($"--steps: must be at least 1, got {st}");
                if (p.GetValue(samples) is { } sa && sa < 1) throw new ValleyException($"--samples: must be at least 1, got {sa}");
                return list;
            });
            var dir = p.GetValue(outDir)!;
            var group = CommonOptions.Group;
            var (lockFile, ctx) = o.Prepare(p, dir);
            using var _lock = lockFile;
            using var _ctx = ctx;
            var names = group.Agree(() => SharpnessSuite.Resolve(p.GetValue(measures)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries), ctx.Model));
            // w₀ for the "init" bounds: the architecture's initialization with the same seed (what valley train starts from).
            var init = ModelSpec.Parse(p.GetValue(o.Model)!).Build(ctx.Train, p.GetValue(o.Seed));
            using var w0 = TorchSharp.torch.cat(init.parameters().Select(q => q.detach().reshape(-1)).ToArray());
            var options = new SharpnessSuiteOptions
            {
                Measures = names, Epsilons = epsilons, Rho = p.GetValue(rho), Steps = p.GetValue(steps), Samples = p.GetValue(samples), Seed = p.GetValue(o.Seed),
                BatchSize = p.GetValue(o.BatchSize), Layer = p.GetValue(o.Layer), Group = group,
            };
            bool json = CommonOptions.Json(p, o);
            var term = CommonOptions.Terminal(json);
            var inputs = CommonOptions.Inputs(p, ctx);
            var path = Path.Combine(dir, "sharpness.json");
            // Rank 0 decides what an earlier run of identical inputs left finished; every rank skips the same measures.
            string? replaced = null;
            var accepted = group.Broadcast(group.IsRoot() ? Resumable(path, inputs, out replaced) : []);
            var earlier = accepted.Length > 0 ? System.Text.Json.JsonSerializer.Deserialize<Output>(accepted, AtomicFile.Json) : null;
            var results = earlier?.Results.Take(earlier.FinishedResults).ToList() ?? [];
            var finished = earlier?.Finished.ToList() ?? [];
            int finishedResults = results.Count;
            if (replaced is not null && !json) term.MarkupLine($"[yellow]{Markup.Escape(dir)} held results of other inputs ({Markup.Escape(replaced)}): starting afresh[/]");
            Output Wrap() => new(p.GetValue(o.Model)!, p.GetValue(o.Weights), ctx.TrainName, ctx.TrainExamples, p.GetValue(o.Seed), inputs, finished, finishedResults, results);
            // Written with the first result, not before: a run that fails at once leaves the folder as it was.
            void Save() { if (group.IsRoot()) AtomicFile.WriteJson(path, Wrap()); }
            void Work(Action<string> start)
                => SharpnessSuite.Run(ctx.Model, ctx.Objective.Loss, ctx.Objective.Data, w0, options,
                    start, r => { results.Add(r); Save(); }, ct,
                    measureDone: name => { finished.Add(name); finishedResults = results.Count; Save(); }, skip: finished.ToHashSet());
            if (!CommonOptions.ShowProgress(json)) Work(_ => { });
            else
                term.Progress().AutoClear(false).Columns(new TaskDescriptionColumn(), new SpinnerColumn(), new ElapsedTimeColumn())
                    .Start(c =>
                    {
                        ProgressTask? task = null;
                        Work(name => { if (task is not null) { task.Value = task.MaxValue; task.StopTask(); } task = c.AddTask(Markup.Escape(name), maxValue: 1); });
                        if (task is not null) { task.Value = 1; task.StopTask(); }
                    });
            Save();
            if (json) { p.InvocationConfiguration.Output.WriteLine(AtomicFile.ToJson(Wrap())); return Task.FromResult(0); }
            var t = new Table().AddColumns("measure", "parameters", "value", "max loss", "evaluations", "time");
            foreach (var res in results)
                t.AddRow(Markup.Escape(res.Measure), Markup.Escape(string.Join(" ", res.Parameters.Where(kv => !Hidden.Contains(kv.Key)).Select(kv => $"{Short(kv.Key)}={kv.Value:G3}"))),
                    res.StandardError is { } se && double.IsFinite(se) ? $"{res.Value:G5} ± {se:G2}" : $"{res.Value:G5}",
                    res.MaxLoss is { } ml ? $"{ml:G5}" : "", $"{res.LossEvaluations} L, {res.GradientEvaluations} ∇", $"{res.Seconds:F1} s");
            term.Write(t);
            term.MarkupLine($"Results in [blue]{Markup.Escape(path)}[/]" + (earlier is null ? "" : $" ({earlier.Finished.Count} measures reused from an earlier run of the same inputs)"));
            return Task.FromResult(0);
        });
        return cmd;
    }

    /// <summary>An earlier sharpness.json of identical inputs, as JSON (empty when there is none); <paramref name="replaced"/> says what differs otherwise.</summary>
    static byte[] Resumable(string path, RunInputs inputs, out string? replaced)
    {
        replaced = null;
        if (!File.Exists(path)) return [];
        Output? prev = null;
        try { prev = System.Text.Json.JsonSerializer.Deserialize<Output>(File.ReadAllBytes(path), AtomicFile.Json); }
        catch (System.Text.Json.JsonException) { /* not a sharpness.json of this version: start afresh */ }
        if (prev?.Results is not null && prev.Finished is not null && inputs.SameAs(prev.Inputs) && prev.FinishedResults <= prev.Results.Count)
            return System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(prev, AtomicFile.Json);
        replaced = inputs.DifferencesFrom(prev?.Inputs);
        return [];
    }
}
