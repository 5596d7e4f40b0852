using Valley.IO;
using System.CommandLine;
using Spectre.Console;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Reporting;
using Valley.Runs;

namespace Valley.Cli.Commands;

/// <summary><c>valley hessian</c>: top/bottom eigenvalues (Lanczos), trace (Hutch++/Hutchinson), spectral density (SLQ), exact spectrum.</summary>
public static class HessianCommand
{
    /// <summary>
    /// What hessian.json holds: a description of the run, its inputs by content (<see cref="RunInputs"/>: a rerun into the same
    /// folder resumes only from a report of identical inputs) and the report.
    /// </summary>
    public sealed record Output(string Model, string? Weights, string Data, long Examples, long Parameters, string? Layer, string DType, long Seed, int Threads,
        RunInputs Inputs, SpectrumReport Report);

    /// <summary>The files a run writes besides hessian.json; an earlier run's are removed when a run of other inputs starts.</summary>
    static readonly string[] DensityFiles = ["density.csv", "density-nodes.csv", "density.png"];

    public static Command Build()
    {
        var o = new CommonOptions();
        var top = new Option<int?>("--top") { Description = "Top-k eigenvalues by Lanczos (default 5 when no estimator is chosen)" };
        var bottom = new Option<int?>("--bottom") { Description = "Bottom-k (most negative) eigenvalues (default 1 when no estimator is chosen)" };
        var trace = new Option<bool>("--trace") { Description = "Estimate the trace (Hutch++ by default)" };
        var density = new Option<bool>("--density") { Description = "Estimate the spectral density by stochastic Lanczos quadrature" };
        var exact = new Option<bool>("--exact") { Description = "Exact dense spectrum (models of up to 5,000 parameters)" };
        var tol = new Option<double>("--tol") { Description = "Lanczos relative residual tolerance ‖Hv−θv‖ ≤ tol·|θ|", DefaultValueFactory = _ => 1e-3 };
        var traceErr = new Option<double>("--trace-error") { Description = "Relative standard error the trace stops at", DefaultValueFactory = _ => 0.01 };
        var traceMethod = new Option<string>("--trace-method") { Description = "hutch++ or hutchinson", DefaultValueFactory = _ => "hutch++" }.AcceptOnlyFromAmong("hutch++", "hutchinson");
        var maxProducts = new Option<long>("--max-products") { Description = "Budget of Hessian-vector products per estimator", DefaultValueFactory = _ => 1000 };
        var runs = new Option<int>("--density-runs") { Description = "SLQ runs n_v (Ghorbani et al. 2019: 10)", DefaultValueFactory = _ => 10 };
        var steps = new Option<int>("--density-steps") { Description = "SLQ Lanczos steps m (Ghorbani et al. 2019: 80)", DefaultValueFactory = _ => 80 };
        var outDir = new Option<string>("--out", "-o") { Description = "Output folder for hessian.json, density.csv and density.png", DefaultValueFactory = _ => "out/hessian" };
        var cmd = new Command("hessian", "Hessian spectrum of a model's loss: λmax/top-k and λmin (Lanczos), trace (Hutch++), spectral density (SLQ). " +
                                         "With no estimator chosen: --top 5 --bottom 1 --trace --density.");
        o.AddTo(cmd);
        foreach (var opt in new Option[] { top, bottom, trace, density, exact, tol, traceErr, traceMethod, maxProducts, runs, steps, outDir }) cmd.Options.Add(opt);
        cmd.SetAction((p, ct) =>
        {
            bool any = p.GetValue(top) is not null || p.GetValue(bottom) is not null || p.GetValue(trace) || p.GetValue(density) || p.GetValue(exact);
            var options = new SpectrumAnalysisOptions
            {
                Top = p.GetValue(top) ?? (any ? 0 : 5),
                Bottom = p.GetValue(bottom) ?? (any ? 0 : 1),
                Trace = any ? p.GetValue(trace) : true,
                Density = any ? p.GetValue(density) : true,
                Exact = p.GetValue(exact),
                Tolerance = p.GetValue(tol),
                TraceRelativeError = p.GetValue(traceErr),
                TraceMethod = p.GetValue(traceMethod)!,
                MaxProducts = p.GetValue(maxProducts),
                DensityRuns = p.GetValue(runs),
                DensitySteps = p.GetValue(steps),
                Seed = p.GetValue(o.Seed),
            };
            var dir = p.GetValue(outDir)!;
            var group = CommonOptions.Group;
            var (lockFile, ctx) = o.Prepare(p, dir);
            using var _lock = lockFile;
            using var _ctx = ctx;
            var op = new HessianOperator(ctx.Objective) { Cancellation = ct };
            group.Agree(() => SpectrumAnalysis.Validate(op, options));
            bool json = CommonOptions.Json(p, o);
            var term = CommonOptions.Terminal(json);
            var inputs = CommonOptions.Inputs(p, ctx);
            Output Wrap(SpectrumReport r) => new(p.GetValue(o.Model)!, p.GetValue(o.Weights), ctx.TrainName, ctx.TrainExamples, op.Size, p.GetValue(o.Layer),
                p.GetValue(o.DType)!, p.GetValue(o.Seed), TorchSharp.torch.get_num_threads(), inputs, r);
            var jsonPath = Path.Combine(dir, "hessian.json");
            if (!json) term.MarkupLine($"[bold]{Markup.Escape(p.GetValue(o.Model)!)}[/]: {op.Size:N0} parameters, {Markup.Escape(ctx.Train.ToString())}" +
                                       (group.Size > 1 ? $" on each of {group.Size} ranks ({ctx.TrainExamples} in all)" : ""));
            // An interrupted run of the same inputs in this folder: keep its finished estimators. Rank 0 reads the file and
            // decides; every rank resumes from the report it sends. Results of other inputs are replaced: the run starts afresh.
            string? replaced = null;
            var accepted = group.Broadcast(group.IsRoot() ? Resumable(jsonPath, inputs, out replaced) : []);
            var earlier = accepted.Length > 0 ? System.Text.Json.JsonSerializer.Deserialize<SpectrumReport>(accepted, AtomicFile.Json) : null;
            if (group.IsRoot() && earlier is null)
            {
                foreach (var f in DensityFiles.Append("hessian.json")) File.Delete(Path.Combine(dir, f));
                if (replaced is not null && !json) term.MarkupLine($"[yellow]{Markup.Escape(dir)} held results of other inputs ({Markup.Escape(replaced)}): starting afresh[/]");
            }
            SpectrumReport report = null!;
            ProgressBars.Run(term, (reportProgress) =>
                report = SpectrumAnalysis.Run(op, options, reportProgress, partial: r => { if (group.IsRoot()) AtomicFile.WriteJson(jsonPath, Wrap(r)); }, ct: ct, resumeFrom: earlier));
            if (group.IsRoot()) WriteFiles(dir, report, p.GetValue(o.Model)!);
            if (json) p.InvocationConfiguration.Output.WriteLine(AtomicFile.ToJson(Wrap(report)));
            else Render(term, report, dir);
            return Task.FromResult(0);
        });
        return cmd;
    }

    /// <summary>
    /// The report of an earlier run of identical inputs in hessian.json, as JSON; empty when there is none. When the file holds
    /// a run of other inputs, <paramref name="replaced"/> says what differs.
    /// </summary>
    static byte[] Resumable(string jsonPath, RunInputs inputs, out string? replaced)
    {
        replaced = null;
        if (!File.Exists(jsonPath)) return [];
        Output? prev = null;
        try { prev = System.Text.Json.JsonSerializer.Deserialize<Output>(File.ReadAllBytes(jsonPath), AtomicFile.Json); }
        catch (System.Text.Json.JsonException) { /* not a hessian.json of this version: start afresh */ }
        if (prev?.Report is not null && inputs.SameAs(prev.Inputs)) return System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(prev.Report, AtomicFile.Json);
        replaced = inputs.DifferencesFrom(prev?.Inputs);
        return [];
    }

    static void WriteFiles(string dir, SpectrumReport r, string model)
    {
        if (r.Density is not { } d) return;
        Csv.Write(Path.Combine(dir, "density.csv"), ["eigenvalue", "density"], d.Grid.Select((g, i) => new object[] { g, d.Density[i] }));
        Csv.Write(Path.Combine(dir, "density-nodes.csv"), ["run", "node", "weight"],
            d.Nodes.SelectMany((nodes, run) => nodes.Select((t, i) => new object[] { run, t, d.Weights[run][i] })));
        Plots.SpectralDensity(d, Path.Combine(dir, "density.png"), $"Hessian spectral density: {model}", r.LambdaMax, r.LambdaMin);
    }

    static string Pm(double v, double se) => double.IsFinite(se) ? $"{v:G6} ± {se:G2}" : $"{v:G6}";

    static void Render(IAnsiConsole term, SpectrumReport r, string dir)
    {
        var t = new Table().AddColumns("quantity", "value", "accuracy", "products", "time");
        void Eig(string name, Eigenpairs? e)
        {
            if (e is null) return;
            for (int i = 0; i < e.Values.Length; i++)
                t.AddRow($"{name} {i + 1}", $"{e.Values[i]:G6}", $"residual {e.RelativeResiduals[i]:0.0e+0}{(e.Converged ? "" : " [yellow](not converged)[/]")}",
                    i == 0 ? e.Products.ToString() : "", i == 0 ? $"{e.Seconds:F1} s" : "");
        }
        Eig("λ top", r.Top);
        Eig("λ bottom", r.Bottom);
        if (r.Trace is { } tr)
            t.AddRow($"trace ({tr.Method})", Pm(tr.Trace, tr.StandardError), $"rel. SE {tr.StandardError / Math.Abs(tr.Trace):P2}{(tr.Converged ? "" : " [yellow](budget reached)[/]")}", tr.Products.ToString(), $"{tr.Seconds:F1} s");
        if (r.Density is { } d)
        {
            t.AddRow("density (SLQ)", $"{d.Runs} runs × {d.Steps} steps", $"σ² = {d.Sigma2:G3}", d.Products.ToString(), $"{d.Seconds:F1} s");
            t.AddRow("  trace from density", Pm(d.Trace, d.TraceStandardError), "", "", "");
            t.AddRow("  negative mass", $"{d.NegativeMass:P2}", $"eigenvalues < −1e-3·|λ|max ({d.NegativeMassRaw:P1} below 0)", "", "");
        }
        if (r.Exact is { } x)
            t.AddRow("exact spectrum", $"λmax {x.Eigenvalues[^1]:G6}, λmin {x.Eigenvalues[0]:G6}, trace {x.Trace:G6}", $"asymmetry {x.Asymmetry:0.0e+0}", x.Products.ToString(), $"{x.Seconds:F1} s");
        if (r.NegativeRatio is { } nr) t.AddRow("|λmin / λmax|", $"{nr:G4}", "", "", "");
        term.Write(t);
        term.MarkupLine($"{r.Products} Hessian-vector products in {r.Seconds:F1} s. Results in [blue]{Markup.Escape(Path.Combine(dir, "hessian.json"))}[/]" +
                        (r.Density is null ? "" : ", density.csv, density.png"));
    }
}
