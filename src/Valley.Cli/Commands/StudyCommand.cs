using Valley.IO;
using System.CommandLine;
using Spectre.Console;
using Valley.Data;
using Valley.Reporting;
using Valley.Runs;
using Valley.Study;

namespace Valley.Cli.Commands;

/// <summary><c>valley study</c>: Valley's main job, "do sharp minima generalize worse?" on real data, with a self-contained report.</summary>
public static class StudyCommand
{
    static void ModelSpecCheck(string model, Dataset train) => new Models.ModelSource(model).CheckInput(train.ExampleShape, train.NumClasses);

    public static Command Build()
    {
        var preset = new Option<string>("--preset") { Description = "quick (≈1 minute smoke run), default (24 models, ≤ 10 minutes on 2 cores), full (all 60,000 images, 3 architectures, 72 models: hours, or an MPI job)", DefaultValueFactory = _ => "default" }
            .AcceptOnlyFromAmong([.. StudySpec.PresetNames]);
        var spec = new Option<string?>("--spec") { Description = "A study specification file (JSON): data, model or architectures, grid, stopping rule, measures, figures (start from --print-spec default)" };
        var printSpec = new Option<string?>("--print-spec") { Description = "Print a preset's spec (quick, default or full) to start your own from, and exit" }.AcceptOnlyFromAmong([.. StudySpec.PresetNames]);
        var models = new Option<string?>("--models") { Description = "A model zoo: a folder with models.csv (name, weights[, model, init, steps, hyperparameter columns...]): Valley trains nothing, it measures these models" };
        var model = new Option<string>("--model", "-m") { Description = "Architecture of every model (replaces the spec's): a built-in spec, or a TorchScript archive (every model then starts from the archive's weights)", DefaultValueFactory = _ => "mlp:784-128-64-10" };
        var data = new Option<string?>("--data", "-d") { Description = "Data with a test set (replaces the spec's; default: Fashion-MNIST)" };
        var labels = new Option<string?>("--labels") { Description = "Labels for a tensor file of inputs given as --data (e.g. --data x.npy --labels y.npy)" };
        var task = new Option<string?>("--task") { Description = "classification or regression (default: told by the data)" }.AcceptOnlyFromAmong("classification", "regression");
        var loss = new Option<string?>("--loss") { Description = "cross-entropy, mse or bce (default: cross-entropy for classification, mse for regression)" }.AcceptOnlyFromAmong([.. Valley.Curvature.Losses.Names]);
        var outDir = new Option<string>("--out", "-o") { Description = "Output folder (reused and continued when it holds an earlier run of the same study)", DefaultValueFactory = _ => "out/study" };
        var threads = new Option<int>("--threads") { Description = "CPU threads for LibTorch (0 = default)", DefaultValueFactory = _ => 0 };
        var format = new Option<string>("--format") { Description = "Terminal output", DefaultValueFactory = _ => "table" }.AcceptOnlyFromAmong("table", "json");
        var verbose = new Option<bool>("--verbose") { Description = "Show stack traces on errors" };
        var cmd = new Command("study", "Train a grid of models (optimizer incl. SAM/ASAM, learning rate, batch size, weight decay, ρ, seed, training-set size, architecture; " +
                                       "a preset or --spec FILE), or measure your own (--models DIR); measure every curvature and sharpness measure; " +
                                       "relate them to the generalization gap; write report.html, summary.json, results.csv and figures")
            { preset, spec, printSpec, models, model, data, labels, task, loss, outDir, threads, format, verbose };
        cmd.SetAction((p, ct) =>
        {
            if (p.GetValue(printSpec) is { } shown)
            {
                p.InvocationConfiguration.Output.Write(StudySpec.Preset(shown).ToJson());
                return Task.FromResult(0);
            }
            var group = CommonOptions.Group;
            bool Given(Option o) => p.GetResult(o) is { Implicit: false };
            var studySpec = group.Agree(() =>
            {
                CommonOptions.SetThreads(p.GetValue(threads));
                if (Given(spec) && Given(preset)) throw new ValleyException("--spec and --preset: give one (a spec file says everything a preset does)");
                var sp = p.GetValue(spec) is { } file ? StudySpec.Load(file, $"--spec {file}") : StudySpec.Preset(p.GetValue(preset)!);
                // Options given on the command line replace the spec's.
                if (Given(model)) sp = sp with { Model = p.GetValue(model)!, Architectures = null };
                if (Given(data)) sp = sp with { Data = sp.Data with { Path = p.GetValue(data) } };
                if (Given(labels)) sp = sp with { Data = sp.Data with { Labels = p.GetValue(labels) } };
                if (Given(task)) sp = sp with { Data = sp.Data with { Task = p.GetValue(task) } };
                if (Given(loss)) sp = sp with { Data = sp.Data with { Loss = p.GetValue(loss) } };
                new Models.ModelSource(sp.Model).Validate();
                if (p.GetValue(models) is null && sp.Expand().Count == 0)
                    throw new ValleyException($"--spec {p.GetValue(spec)}: grid: no models: give a grid (value lists) or a list of models, or measure a model zoo with --models DIR");
                return sp;
            });
            var options = studySpec.ToOptions();
            var dir = p.GetValue(outDir)!;
            var marker = Path.Combine(dir, "study.json");
            RunInputs inputs = null!;
            // Data are checked before anything is written into --out. Every rank holds all the data (models are shared out).
            var (lockFile, split) = group.Agree(() =>
            {
                OutputLock? lk = null;
                DataSplit? sp = null;
                try
                {
                    if (group.IsRoot())
                    {
                        AtomicFile.EnsureWritableFolder(dir);
                        lk = OutputLock.Acquire(dir);
                    }
                    var d = studySpec.Data;
                    sp = DataSources.Open(d.Path, labels: d.Labels, task: CommonOptions.ParseTask(d.Task));
                    options = options with { Loss = Valley.Curvature.Losses.Named(d.Loss, sp.Train.Task) };
                    Valley.Curvature.Losses.CheckTargets(options.EffectiveLoss, sp.Train);
                    if (sp.Test is null) throw new ValleyException($"--data {d.Path}: no test set (the study needs one for the generalization gap)");
                    foreach (var arch in options.Models.Select(options.ArchitectureOf).Append(options.Model).Distinct()) ModelSpecCheck(arch, sp.Train);
                    // A zoo replaces the grid: its models are loaded (and checked against the data here), not trained.
                    if (p.GetValue(models) is { } zoo)
                        options = options with { Preset = $"{options.Preset}, models from {zoo}", Models = StudyZoo.Read(zoo, options.Model, sp.Train) };
                    // A study folder is continued only by a study of identical inputs: the data by content, not by name; the spec by section.
                    inputs = studySpec.AddTo(new RunInputs().With("valley", typeof(RunInputs).Assembly.GetName().Version).With("measurements", StudyRunner.MeasurementsFormat))
                        .With("--loss", Valley.Curvature.Losses.NameOf(options.EffectiveLoss)).With("--models", p.GetValue(models) is null ? null : StudyZoo.Digest(options.Models))
                        .With("data", RunInputs.Digest(sp.Train)).With("test data", RunInputs.Digest(sp.Test));
                    if (group.IsRoot() && File.Exists(marker))
                    {
                        RunInputs? earlier = null;
                        try { earlier = System.Text.Json.JsonSerializer.Deserialize<RunInputs>(File.ReadAllText(marker), AtomicFile.Json); }
                        catch (System.Text.Json.JsonException) { /* another version's marker: unknown inputs */ }
                        if (!inputs.SameAs(earlier))
                            throw new ValleyException($"--out {dir}: holds a study of other inputs ({inputs.DifferencesFrom(earlier)}); choose another --out or remove it");
                    }
                    return (lk, sp);
                }
                catch
                {
                    sp?.Dispose();
                    lk?.Dispose();
                    throw;
                }
            }, r => { r.sp.Dispose(); r.lk?.Dispose(); });
            using var _lock = lockFile;
            using var _split = split;
            if (group.IsRoot())
            {
                AtomicFile.WriteJson(marker, inputs);
                AtomicFile.WriteAllText(Path.Combine(dir, "spec.json"), studySpec.ToJson());
            }
            bool json = p.GetValue(format) == "json";
            var term = CommonOptions.Terminal(json);
            StudySummary summary = null!;
            ProgressBars.Run(term, CommonOptions.ShowProgress(json), (StudyProgress pr) => new Bar("study", pr.Stage, pr.Done, pr.Total),
                progress => summary = StudyRunner.Run(options, split, dir, progress, ct, group));
            if (json) { p.InvocationConfiguration.Output.WriteLine(AtomicFile.ToJson(summary)); return Task.FromResult(0); }
            var table = new Table().AddColumns("model", "epochs", "λmax", "Keskar ε=1e-3", "test acc", "acc gap", "loss gap");
            foreach (var m in summary.Models)
                table.AddRow(Markup.Escape(m.Name), m.Epochs.ToString(), $"{m.Measures.GetValueOrDefault("lambda_max", double.NaN):G4}", $"{m.Measures.GetValueOrDefault("keskar_eps1e-3", double.NaN):G4}",
                    $"{100 * m.TestAccuracy:F2}%", $"{100 * m.AccuracyGap:F2}%", $"{m.LossGap:G3}");
            term.Write(table);
            // The ranking, sorted by the lower bound of the interval of τ in each measure's own direction (StudyStatistics).
            var rk = summary.Ranking;
            static string T(double v) => double.IsFinite(v) ? v.ToString("+0.00;-0.00;0.00", System.Globalization.CultureInfo.InvariantCulture) : "–";
            var tt = new Table().AddColumns("measure", Markup.Escape($"τ acc gap [{100 * rk.Options.Confidence:0.#}% CI]"), "p", Markup.Escape("Ψ [CI]"), "marks");
            foreach (var r in rk.Rows.Take(12))
            {
                var a = r.AccuracyGap;
                var marks = new List<string>();
                if (r.IsBaseline) marks.Add("baseline");
                marks.Add(r.DistinguishableFromZero ? (a.Tau > 0 ? "≠0" : "≠0 reversed") : "?");
                if (r.Measure == rk.BestBaseline) marks.Add("best baseline");
                else if (r.ComparedWithBestBaseline is { } c) marks.Add(c switch { "better" => "> best bl", "worse" => "< best bl", _ => "≈ best bl" });
                if (r.Seeds is > 0) marks.Add($"sign {r.SeedsAgreeing}/{r.Seeds} seeds");
                tt.AddRow(Markup.Escape(r.Measure), Markup.Escape($"{T(a.Tau)} [{T(a.Lower)}, {T(a.Upper)}]"), $"{a.PValue:G2}",
                    Markup.Escape($"{T(r.Psi.Value)} [{T(r.Psi.Lower)}, {T(r.Psi.Upper)}]"), Markup.Escape(string.Join(", ", marks)));
            }
            term.Write(tt);
            term.MarkupLine(Markup.Escape($"{rk.Models} models; sorted by the lower bound of τ (a negative τ by its upper bound, marked reversed). ≠0: interval excludes 0 and " +
                $"p ≤ {1 - rk.Options.Confidence:0.###}; ?: inconclusive; >, <, ≈ best bl: paired bootstrap against the best baseline ({rk.BestBaseline ?? "none"}). All {rk.Rows.Count} rows in report.html."));
            foreach (var f in summary.Findings.Take(3)) term.MarkupLine("• " + Markup.Escape(f));
            foreach (var n in summary.Notes) term.MarkupLine("[grey]" + Markup.Escape(n) + "[/]");
            term.MarkupLine($"Report: [blue]{Markup.Escape(Path.GetFullPath(Path.Combine(dir, "report.html")))}[/] ({summary.Seconds:F0} s)");
            return Task.FromResult(0);
        });
        return cmd;
    }
}
