using System.CommandLine;
using Spectre.Console;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.IO;
using Valley.Reporting;

namespace Valley.Cli.Commands;

/// <summary><c>valley hessian</c>: top/bottom eigenvalues (Lanczos), trace (exact, XTrace, Hutch++ or Hutchinson), spectral density (SLQ), diagonal, exact spectrum.</summary>
public static class HessianCommand
{
    /// <summary>The command.</summary>
    public static Command Build()
    {
        var o = new CommonOptions();
        var top = new Option<int?>("--top") { Description = "Top-k eigenvalues by Lanczos (default 5 when no estimator is chosen)" };
        var bottom = new Option<int?>("--bottom") { Description = "Bottom-k (most negative) eigenvalues (default 1 when no estimator is chosen)" };
        var trace = new Option<bool>("--trace") { Description = "The trace (by default exact for a stack of Linear layers, XTrace otherwise; see --trace-method)" };
        var density = new Option<bool>("--density") { Description = "Estimate the spectral density by stochastic Lanczos quadrature" };
        var exact = new Option<bool>("--exact") { Description = "Exact dense spectrum (models of up to 5,000 parameters)" };
        var tol = new Option<double>("--tol") { Description = "Lanczos relative residual tolerance ‖Hv−θv‖ ≤ tol·|θ|", DefaultValueFactory = _ => 1e-3 };
        var traceErr = new Option<double>("--trace-error") { Description = "Relative standard error the trace stops at", DefaultValueFactory = _ => 0.01 };
        var traceMethod = new Option<string>("--trace-method") { Description = "auto (exact from the diagonal for the Hessian or GGN of a stack of Linear layers, about one product's work; XTrace otherwise), xtrace, hutch++ or hutchinson", DefaultValueFactory = _ => TraceMethodName(new SpectrumAnalysisOptions().TraceMethod) }.AcceptOnlyFromAmong("auto", "xtrace", "hutch++", "hutchinson");
        var maxProducts = new Option<long>("--max-products") { Description = "Budget of Hessian-vector products per estimator", DefaultValueFactory = _ => 1000 };
        var runs = new Option<int>("--density-runs") { Description = "SLQ runs n_v (Ghorbani et al. 2019: 10)", DefaultValueFactory = _ => 10 };
        var steps = new Option<int>("--density-steps") { Description = "SLQ Lanczos steps m (Ghorbani et al. 2019: 80)", DefaultValueFactory = _ => 80 };
        var opName = new Option<string>("--operator") { Description = "The curvature matrix: hessian, ggn (generalized Gauss-Newton), ef (empirical Fisher), mc-fisher (Monte-Carlo Fisher) or kfac (K-FAC: eigenvalues, trace, diagonal and Frobenius norm exactly from its Kronecker factors)", DefaultValueFactory = _ => "hessian" }
            .AcceptOnlyFromAmong([.. CurvatureOperators.Names]);
        var mcSamples = new Option<int>("--mc-samples") { Description = "Labels sampled per example by mc-fisher and kfac --kfac-expectation mc", DefaultValueFactory = _ => 1 };
        var kfacExpectation = new Option<string>("--kfac-expectation") { Description = "K-FAC's output-gradient factor: mc (labels sampled from the model's predictive distribution, --mc-samples per example, as published: one backward pass per batch), exact (the expectation itself: one backward pass per class and batch) or empirical (the data's labels)", DefaultValueFactory = _ => "mc" }
            .AcceptOnlyFromAmong("exact", "mc", "empirical");
        var diagonal = new Option<bool>("--diagonal") { Description = "The diagonal (written to diagonal.csv by parameter name, entry and standard error; a per-parameter summary in the terminal)" };
        var diagonalMethod = new Option<string>("--diagonal-method") { Description = "auto (exact for the Hessian or GGN of a stack of Linear layers, Hutchinson otherwise), hutchinson or xdiag", DefaultValueFactory = _ => "auto" }.AcceptOnlyFromAmong("auto", "hutchinson", "xdiag");
        var diagonalProducts = new Option<long>("--diagonal-products") { Description = "Products the diagonal estimator spends", DefaultValueFactory = _ => 100 };
        var frobenius = new Option<bool>("--frobenius") { Description = "Estimate the Frobenius norm (E‖Av‖² over Rademacher probes, to --trace-error)" };
        var outDir = new Option<string>("--out", "-o") { Description = "Output folder for hessian.json, density.csv and density.png", DefaultValueFactory = _ => "out/hessian" };
        var cmd = new Command("hessian", "Hessian spectrum of a model's loss: λmax/top-k and λmin (Lanczos), trace (exact for a stack of Linear layers, else XTrace), spectral density (SLQ). " +
                                         "With no estimator chosen: --top 5 --bottom 1 --trace --density.");
        o.AddTo(cmd);
        o.AddGraphMemory(cmd);
        foreach (var opt in new Option[] { top, bottom, trace, density, exact, tol, traceErr, traceMethod, maxProducts, runs, steps, opName, mcSamples, kfacExpectation, diagonal, diagonalMethod, diagonalProducts, frobenius, outDir }) cmd.Options.Add(opt);
        // The library's names of these options (SpectrumAnalysisOptions and the estimators' options) where they are not the kebab-case.
        OptionNames.Register("hessian", new Dictionary<string, string>
        {
            [nameof(SpectrumAnalysisOptions.Tolerance)] = "--tol",
            [nameof(SpectrumAnalysisOptions.TraceRelativeError)] = "--trace-error",
            [nameof(HutchinsonOptions.RelativeStandardError)] = "--trace-error",
            [nameof(SpectralDensityOptions.Runs)] = "--density-runs",
            [nameof(SpectralDensityOptions.Steps)] = "--density-steps",
            [nameof(CurvatureOperatorOptions.Samples)] = "--mc-samples",
            ["samples"] = "--mc-samples",
            [nameof(DiagonalOptions.Products)] = "--diagonal-products",
        });
        cmd.SetAction((p, ct) =>
        {
            bool any = p.GetValue(top) is not null || p.GetValue(bottom) is not null || p.GetValue(trace) || p.GetValue(density) || p.GetValue(exact)
                       || p.GetValue(diagonal) || p.GetValue(frobenius);
            var options = new SpectrumAnalysisOptions
            {
                Top = p.GetValue(top) ?? (any ? 0 : 5),
                Bottom = p.GetValue(bottom) ?? (any ? 0 : 1),
                Trace = any ? p.GetValue(trace) : true,
                Density = any ? p.GetValue(density) : true,
                Exact = p.GetValue(exact),
                Tolerance = p.GetValue(tol),
                TraceRelativeError = p.GetValue(traceErr),
                TraceMethod = p.GetValue(traceMethod) switch { "hutchinson" => TraceMethod.Hutchinson, "xtrace" => TraceMethod.XTrace, "hutch++" => TraceMethod.HutchPlusPlus, _ => TraceMethod.Auto },
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
            var kind = CurvatureOperators.Parse(p.GetValue(opName)!);
            var diagonalOptions = p.GetValue(diagonal)
                ? new DiagonalOptions { Method = p.GetValue(diagonalMethod) switch { "xdiag" => DiagonalMethod.XDiag, "hutchinson" => DiagonalMethod.Hutchinson, _ => DiagonalMethod.Auto }, Products = p.GetValue(diagonalProducts), Seed = options.Seed + 5 }
                : null;
            var frobeniusOptions = p.GetValue(frobenius)
                ? new FrobeniusOptions { RelativeStandardError = options.TraceRelativeError, MaxProducts = options.MaxProducts, Seed = options.Seed + 6 }
                : null;
            ICurvatureOperator op = null!;
            // Every rank refuses bad options alike, in this command's option names.
            group.Agree(() =>
            {
                try
                {
                    op = CurvatureOperators.Create(ctx.Objective, kind, new CurvatureOperatorOptions
                    {
                        Samples = p.GetValue(mcSamples), Seed = options.Seed,
                        KfacExpectation = p.GetValue(kfacExpectation) switch { "exact" => KfacExpectation.Exact, "empirical" => KfacExpectation.Empirical, _ => KfacExpectation.MonteCarlo },
                    }, ct);
                    SpectrumAnalysis.Validate(op, options);
                    if (diagonalOptions is not null) DiagonalEstimator.Validate(op, diagonalOptions);
                    if (frobeniusOptions is not null) FrobeniusNorm.Validate(frobeniusOptions);
                }
                catch (ArgumentException e) when (OptionNames.Translate(e, "hessian") is { } message) { throw new ValleyException(message, e); }
            });
            using var _op = op as IDisposable;
            bool json = CommonOptions.Json(p, o);
            var term = CommonOptions.Terminal(json);
            string name = CurvatureOperators.NameOf(kind);
            var uncovered = (op as KfacOperator)?.UncoveredParameters;
            if (!json) term.MarkupLine($"[bold]{Markup.Escape(p.GetValue(o.Model)!)}[/]: {HessianRun.Title(name)}, {op.Size:N0} parameters, {Markup.Escape(ctx.Train.ToString())}" +
                                       (group.Size > 1 ? $" on each of {group.Size} ranks ({ctx.TrainExamples} in all)" : ""));
            if (!json && op is HessianOperator or GgnOperator) term.MarkupLine($"[grey]products: {Markup.Escape(ctx.Objective.ProductMethodDescription)}[/]");
            if (!json && op is KfacOperator kfac) term.MarkupLine($"[grey]K-FAC: {Markup.Escape(kfac.ExpectationDescription)}[/]");
            if (!json && uncovered is { Count: > 0 })
                term.MarkupLine($"[yellow]K-FAC covers Linear and Conv2d layers only; it is zero on {Markup.Escape(string.Join(", ", uncovered))}[/]");
            var run = HessianRun.Open(dir, new HessianOutput(p.GetValue(o.Model)!, p.GetValue(o.Weights), ctx.TrainName, ctx.TrainExamples, op.Size, p.GetValue(o.Layer),
                p.GetValue(o.DType)!, p.GetValue(o.Seed), TorchSharp.torch.get_num_threads(), CommonOptions.Inputs(p, ctx)) { Operator = name, UncoveredParameters = uncovered, KfacExpectation = (op as KfacOperator)?.ExpectationDescription,
                  HessianProducts = op is HessianOperator or GgnOperator ? ctx.Objective.ProductMethodDescription : null }, group);
            if (run.Replaced is not null && !json) term.MarkupLine($"[yellow]{Markup.Escape(dir)} held results of other inputs ({Markup.Escape(run.Replaced)}): starting afresh[/]");
            HessianOutput output = null!;
            ProgressBars.Run(term, progress =>
            {
                var report = run.Run(op, options, progress, ct);
                output = run.Finish(op, ctx.Objective.Parameters, report, diagonalOptions, frobeniusOptions, progress, ct);
            });
            if (json) p.InvocationConfiguration.Output.WriteLine(AtomicFile.ToJson(output));
            else
            {
                Render(term, output.Report!, run.JsonPath, op.DType, name, output.Frobenius);
                if (output.Diagonal is { } d) RenderDiagonal(term, d, Path.Combine(dir, "diagonal.csv"));
            }
            return Task.FromResult(0);
        });
        return cmd;
    }

    static string TraceMethodName(TraceMethod m) => m switch { TraceMethod.Hutchinson => "hutchinson", TraceMethod.XTrace => "xtrace", TraceMethod.HutchPlusPlus => "hutch++", _ => "auto" };

    static string Pm(double v, double se) => double.IsFinite(se) ? $"{v:G6} ± {se:G2}" : $"{v:G6}";

    /// <summary>A stop reason in words: "precision floor".</summary>
    static string Words(StopReason r) => r switch
    {
        StopReason.BudgetExhausted => "budget exhausted",
        StopReason.InvariantSubspace => "invariant subspace",
        StopReason.LossOfOrthogonality => "loss of orthogonality",
        StopReason.PrecisionFloor => "precision floor",
        _ => "converged",
    };

    /// <summary>The report as a table, with a line on why each eigen-solver that did not converge stopped.</summary>
    /// <param name="term">Where to write.</param>
    /// <param name="r">The report.</param>
    /// <param name="jsonPath">Where the report was written.</param>
    /// <param name="dtype">The dtype of the products (a precision floor below float64 suggests --dtype float64).</param>
    /// <param name="op">The operator's short name ("hessian", "ggn", ...), shown as the table's title.</param>
    /// <param name="frobenius">The Frobenius norm, when estimated.</param>
    public static void Render(IAnsiConsole term, SpectrumReport r, string jsonPath, TorchSharp.torch.ScalarType dtype, string op = "hessian", FrobeniusEstimate? frobenius = null)
    {
        var t = new Table { Title = new TableTitle(HessianRun.Title(op)) }.AddColumns("quantity", "value", "accuracy", "products", "time");
        var notes = new List<string>();
        void Eig(string name, Eigenpairs? e)
        {
            if (e is null) return;
            for (int i = 0; i < e.Values.Length; i++)
                t.AddRow($"{name} {i + 1}", $"{e.Values[i]:G6}", $"residual {e.RelativeResiduals[i]:0.0e+0}{(e.Converged ? "" : $" [yellow](not converged: {Words(e.StopReason)})[/]")}",
                    i == 0 ? e.Products.ToString() : "", i == 0 ? $"{e.Seconds:F1} s" : "");
            if (!e.Converged)
                notes.Add($"{name}: {e.StopMessage}" + (e.StopReason == StopReason.PrecisionFloor && dtype != TorchSharp.torch.ScalarType.Float64 ? " (--dtype float64)" : ""));
        }
        Eig("λ top", r.Top);
        Eig("λ bottom", r.Bottom);
        if (r.Trace is { } tr)
        {
            var accuracy = tr.Method == "exact" ? "from the exact diagonal" : double.IsFinite(tr.StandardError) ? $"rel. SE {tr.StandardError / Math.Abs(tr.Trace):P2}" : "standard error unknown (fewer than 2 probes)";
            t.AddRow($"trace ({tr.Method})", tr.Method == "exact" ? $"{tr.Trace:G6}" : Pm(tr.Trace, tr.StandardError), $"{accuracy}{(tr.Converged ? "" : " [yellow](budget reached)[/]")}", tr.Products.ToString(), $"{tr.Seconds:F1} s");
        }
        if (r.Density is { } d)
        {
            t.AddRow("density (SLQ)", $"{d.Runs} runs × {d.Steps} steps", $"σ² = {d.Sigma2:G3}", d.Products.ToString(), $"{d.Seconds:F1} s");
            t.AddRow("  trace from density", Pm(d.Trace, d.TraceStandardError), "", "", "");
            t.AddRow("  negative mass", double.IsFinite(d.NegativeMassStandardError) ? $"{d.NegativeMass:P2} ± {d.NegativeMassStandardError:P2}" : $"{d.NegativeMass:P2}", $"eigenvalues < −1e-3·|λ|max ({d.NegativeMassRaw:P1} below 0)", "", "");
        }
        if (r.Exact is { } x)
            t.AddRow("exact spectrum", $"λmax {x.Eigenvalues[^1]:G6}, λmin {x.Eigenvalues[0]:G6}, trace {x.Trace:G6}", $"asymmetry {x.Asymmetry:0.0e+0}", x.Products.ToString(), $"{x.Seconds:F1} s");
        if (r.NegativeRatio is { } nr) t.AddRow("|λmin / λmax|", $"{nr:G4}", "", "", "");
        if (frobenius is { } f)
            t.AddRow("Frobenius norm", Pm(f.Norm, f.StandardError), f.Probes == 0 ? "exact" : $"{f.Probes} probes{(f.Converged ? "" : " [yellow](budget reached)[/]")}", f.Products.ToString(), $"{f.Seconds:F1} s");
        term.Write(t);
        foreach (var note in notes) term.MarkupLine($"[yellow]{Markup.Escape(note)}[/]");
        term.MarkupLine($"{r.Products} {(op == "hessian" ? "Hessian" : "operator")}-vector products in {r.Seconds:F1} s. Results in [blue]{Markup.Escape(jsonPath)}[/]" +
                        (r.Density is null ? "" : ", density.csv, density.png"));
    }

    /// <summary>The diagonal's summary by parameter tensor.</summary>
    /// <param name="term">Where to write.</param>
    /// <param name="d">The summary.</param>
    /// <param name="csvPath">Where the entries were written.</param>
    public static void RenderDiagonal(IAnsiConsole term, DiagonalSummary d, string csvPath)
    {
        var t = new Table { Title = new TableTitle($"diagonal ({d.Method}, {d.Products} products)") }
            .AddColumns("parameter", "entries", "sum", "mean", "min", "max", "RMS standard error");
        foreach (var b in d.Blocks)
            t.AddRow(Markup.Escape(b.Parameter), b.Count.ToString("N0"), $"{b.Sum:G5}", $"{b.Mean:G4}", $"{b.Min:G4}", $"{b.Max:G4}", $"{b.RmsStandardError:G3}");
        term.Write(t);
        term.MarkupLine($"Diagonal entries in [blue]{Markup.Escape(csvPath)}[/]");
    }
}
