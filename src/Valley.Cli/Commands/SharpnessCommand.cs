using System.CommandLine;
using System.Globalization;
using Spectre.Console;
using Valley.Models;
using Valley.Sharpness;

namespace Valley.Cli.Commands;

/// <summary><c>valley sharpness</c>: the published sharpness and flatness measures, each with its parameters and uncertainty.</summary>
public static class SharpnessCommand
{
    // Shown in sharpness.json, left out of the terminal table to keep it readable.
    static readonly HashSet<string> Hidden = ["tolerance", "depth", "target_drop", "batch_size", "examples", "subspace_dimension", "inputs", "neurons"];
    static string Short(string k) => k switch { "epsilon" => "ε", "rho" => "ρ", "samples" => "n", "steps" => "steps", "ascent_steps" => "steps", _ => k };

    /// <summary>The command.</summary>
    public static Command Build()
    {
        // The library's names that are not the kebab-case of this command's options.
        OptionNames.Register("sharpness", new Dictionary<string, string> { ["Epsilons"] = "--epsilon", ["ParameterFilter"] = "--layer" });
        var o = new CommonOptions();
        var measures = new Option<string>("--measures")
        {
            Description = $"Comma-separated measures, 'all' (those the model and data allow) or 'list' (describe them): {string.Join(", ", SharpnessMeasures.All.Select(m => m.Name))}",
            DefaultValueFactory = _ => "all",
        };
        var eps = new Option<string>("--epsilon") { Description = "Keskar ε values, comma-separated", DefaultValueFactory = _ => "1e-3,5e-4" };
        var rho = new Option<double?>("--rho") { Description = "Radius ρ for SAM, worst-case and average-case measures (default: each measure's)" };
        var steps = new Option<int?>("--steps") { Description = "Ascent steps (default 20)" };
        var samples = new Option<int?>("--samples") { Description = "Monte-Carlo samples (average-case 20 per batch, PAC-Bayes 10 per σ)" };
        var outDir = new Option<string>("--out", "-o") { Description = "Output folder for sharpness.json", DefaultValueFactory = _ => "out/sharpness" };
        var cmd = new Command("sharpness", "Sharpness and flatness measures: Keskar ε-sharpness, SAM one-step, worst-/average-case (plain, adaptive), PAC-Bayes, worst-case flatness, relative flatness, Fisher proxies. " +
                                           "--layer restricts every measure to those parameters");
        o.AddTo(cmd);
        foreach (var opt in new Option[] { measures, eps, rho, steps, samples, outDir }) cmd.Options.Add(opt);
        cmd.SetAction((p, ct) =>
        {
            var names = Split(p.GetValue(measures)!);
            if (names is ["list"]) return Task.FromResult(List(p));
            var group = CommonOptions.Group;
            var options = group.Agree(() => InOptionNames(() =>
            {
                var epsilons = Split(p.GetValue(eps)!).Select(s => double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) ? v
                    : throw new ValleyException($"--epsilon: '{s}' is not a number")).ToArray();
                var chosen = new SharpnessSuiteOptions
                {
                    Measures = SharpnessMeasures.Resolve(names), Epsilons = epsilons, Rho = p.GetValue(rho), Steps = p.GetValue(steps), Samples = p.GetValue(samples),
                    Seed = p.GetValue(o.Seed),
                };
                chosen.Validate();
                return chosen;
            }));
            var dir = p.GetValue(outDir)!;
            var (lockFile, ctx) = o.Prepare(p, dir);
            using var _lock = lockFile;
            using var _ctx = ctx;
            // w₀ for the "init" bounds: the architecture's initialization with the same seed (what valley train starts from);
            // for a TorchScript archive, the weights it was exported with (what valley train starts from too).
            using var init = new ModelSource(p.GetValue(o.Model)!, null, p.GetValue(o.Seed)).Initialization(ctx.Train);
            options = options with { Initialization = init };
            bool json = CommonOptions.Json(p, o);
            var term = CommonOptions.Terminal(json);
            if (!json && p.GetValue(o.Weights) is null && new ModelSource(p.GetValue(o.Model)!).IsFile)
                term.MarkupLine("[yellow]w₀ of the \"init\" bounds is the archive's own weights (an archive has no seeded initialization): without --weights their distance term is 0[/]");
            var run = SharpnessRun.Open(dir, new SharpnessReport
            {
                Model = p.GetValue(o.Model)!, Weights = p.GetValue(o.Weights), Data = ctx.TrainName, Examples = ctx.TrainExamples, Seed = p.GetValue(o.Seed),
                Inputs = CommonOptions.Inputs(p, ctx),
            }, group);
            if (run.Replaced is not null && !json) term.MarkupLine($"[yellow]{Markup.Escape(dir)} held results of other inputs ({Markup.Escape(run.Replaced)}): starting afresh[/]");
            var report = Compute(run, ctx, options, json, term, ct);
            if (json) { p.InvocationConfiguration.Output.WriteLine(IO.AtomicFile.ToJson(report)); return Task.FromResult(0); }
            var t = new Table().AddColumns("measure", "parameters", "value", "max loss", "evaluations", "time");
            foreach (var res in report.Results)
                t.AddRow(Markup.Escape(res.Measure), Markup.Escape(string.Join(" ", res.Parameters.Where(kv => !Hidden.Contains(kv.Key)).Select(kv => $"{Short(kv.Key)}={kv.Value:G3}"))),
                    res.StandardError is { } se && double.IsFinite(se) ? $"{res.Value:G5} ± {se:G2}" : $"{res.Value:G5}",
                    res.MaxLoss is { } ml ? $"{ml:G5}" : "", $"{res.LossEvaluations} L, {res.GradientEvaluations} ∇", $"{res.Seconds:F1} s");
            term.Write(t);
            term.MarkupLine($"Results in [blue]{Markup.Escape(run.Path)}[/]" + (run.ReusedMeasures == 0 ? "" : $" ({run.ReusedMeasures} measures reused from an earlier run of the same inputs)"));
            return Task.FromResult(0);
        });
        return cmd;
    }

    /// <summary>The run, with a spinner per measure where a terminal shows progress.</summary>
    static SharpnessReport Compute(SharpnessRun run, CommonOptions.Context ctx, SharpnessSuiteOptions options, bool json, IAnsiConsole term, CancellationToken ct)
    {
        SharpnessReport? report = null;
        ProgressBars.Run<SharpnessProgress>(term, CommonOptions.ShowProgress(json),
            pr => new Bar(pr.Measure, pr.Measure, pr.Stage == SharpnessStage.Finished ? 1 : 0, 1),
            progress => report = run.Compute(ctx.Objective, options, progress, ct), spinner: true);
        return report!;
    }

    /// <summary><c>--measures list</c>: every registered measure with what it computes and needs.</summary>
    static int List(System.CommandLine.ParseResult p)
    {
        var t = new Table().AddColumns("measure", "computes", "needs");
        foreach (var m in SharpnessMeasures.All)
            t.AddRow(Markup.Escape(m.Name), Markup.Escape(m.Description), Markup.Escape(m.Needs == MeasureNeeds.None ? "" : m.Needs.ToString()));
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(p.InvocationConfiguration.Output), Interactive = InteractionSupport.No });
        console.Write(t);
        return 0;
    }

    static string[] Split(string text) => text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    /// <summary>
    /// A library argument error in this command's option names, as a <see cref="ValleyException"/>: inside
    /// <see cref="Distributed.ProcessGroups.Agree{T}"/>, so that every rank stops with the same one-line error.
    /// </summary>
    static T InOptionNames<T>(Func<T> step)
    {
        try { return step(); }
        catch (ArgumentException e) when (OptionNames.Translate(e, "sharpness") is { } message) { throw new ValleyException(message, e); }
    }
}
