using System.Globalization;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Serialization;
using Valley.Runs;
using Valley.Sharpness;

namespace Valley.Study;

/// <summary>
/// A study as a file (<c>valley study --spec FILE</c>): the data, the model (or architectures), the grid of training settings,
/// the stopping rule, the measures and their settings, and the figures. The presets (quick, default, full) ship as such files
/// (<see cref="Preset"/>). <see cref="Parse"/> reads one and refuses a bad one in one line naming the field;
/// <see cref="ToJson"/> writes the normalized spec (every default explicit), which is what a study folder's fingerprint covers;
/// <see cref="ToOptions"/> turns it into the <see cref="StudyOptions"/> the runner takes, with one <see cref="StudyModel"/> per
/// model of the grid, named from the hyperparameters that vary.
/// </summary>
public sealed record StudySpec
{
    /// <summary>The spec's name (a preset's name, or the user's), shown in the report.</summary>
    public string Name { get; init; } = "custom";
    /// <summary>Which data, and how many examples.</summary>
    public StudyDataSpec Data { get; init; } = new();
    /// <summary>The architecture of every model unless <see cref="Architectures"/> or a grid entry says otherwise: a built-in spec or a TorchScript archive.</summary>
    public string Model { get; init; } = "mlp:784-128-64-10";
    /// <summary>Architectures every grid entry ranges over (unless the entry gives its own); null: <see cref="Model"/> only.</summary>
    public List<string>? Architectures { get; init; }
    /// <summary>Products of value lists; the study's models are their union (with <see cref="Models"/>).</summary>
    public List<StudyGridSpec> Grid { get; init; } = [];
    /// <summary>Models listed one by one, besides the grid.</summary>
    public List<StudyModelSpec> Models { get; init; } = [];
    /// <summary>When training stops.</summary>
    public StudyStoppingSpec Stopping { get; init; } = new();
    /// <summary>Which measures, with their settings and examples.</summary>
    public StudyMeasuresSpec Measures { get; init; } = new();
    /// <summary>The report's figures.</summary>
    public StudyFiguresSpec Figures { get; init; } = new();
    /// <summary>Seed of the data subsets and the figures' directions (each model has its own seed).</summary>
    public long Seed { get; init; }

    /// <summary>The presets shipped with Valley, in order of size.</summary>
    public static IReadOnlyList<string> PresetNames { get; } = ["quick", "default", "full"];

    static readonly JsonSerializerOptions Write = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, WriteIndented = true, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        // An empty grid or model list is left out (a spec that gives one of them empty is refused).
        TypeInfoResolver = new System.Text.Json.Serialization.Metadata.DefaultJsonTypeInfoResolver
        {
            Modifiers =
            {
                ti =>
                {
                    if (ti.Type != typeof(StudySpec)) return;
                    foreach (var p in ti.Properties.Where(p => p.Name is "grid" or "models"))
                        p.ShouldSerialize = (_, v) => v is System.Collections.ICollection { Count: > 0 };
                },
            },
        },
    };

    /// <summary>The spec as JSON, every default explicit (the normalized spec: parsing it gives the same study).</summary>
    public string ToJson() =>
        // Lists of plain values on one line, so that the printed spec reads like the shipped ones.
        System.Text.RegularExpressions.Regex.Replace(JsonSerializer.Serialize(this, Write), @"(?<="": )\[\s*([^\[\]\{\}]*?)\s*\]",
            m => "[" + string.Join(", ", System.Text.RegularExpressions.Regex.Split(m.Groups[1].Value, @",\s*\n\s*").Select(x => x.Trim())) + "]") + "\n";

    /// <summary>
    /// These inputs and the spec's: each section of the normalized spec by digest ("spec.grid", "spec.measures", ...; the name
    /// and the data's paths are left out, since the data count by content) and every TorchScript archive it names by content.
    /// A study folder is continued only by a study of the same inputs, so a changed spec is refused naming the section.
    /// </summary>
    public RunInputs AddTo(RunInputs inputs)
    {
        var normalized = this with { Name = "", Data = Data with { Path = null, Labels = null } };
        using var doc = JsonDocument.Parse(normalized.ToJson());
        foreach (var p in doc.RootElement.EnumerateObject())
            if (p.Name != "name")
                inputs = inputs.With($"spec.{p.Name}", "sha256:" + Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(p.Value.GetRawText()))));
        var archs = new[] { Model }.Concat(Architectures ?? []).Concat(Grid.SelectMany(g => g.Architecture ?? [])).Concat(Models.Select(m => m.Architecture ?? Model)).Distinct();
        foreach (var a in archs.Where(a => new Models.ModelSource(a).IsFile))
            inputs = inputs.With($"model {a}", new Models.ModelSource(a).Digest);
        return inputs;
    }

    /// <summary>The text of a preset's spec file as shipped (quick, default or full); <see cref="ValleyException"/> for another name.</summary>
    public static string PresetText(string name)
    {
        if (!PresetNames.Contains(name)) throw new ValleyException($"--preset: quick, default or full, got '{name}'");
        using var stream = typeof(StudySpec).Assembly.GetManifestResourceStream($"Valley.Study.Presets.{name}.json")
                           ?? throw new InvalidOperationException($"the {name} preset is missing from {typeof(StudySpec).Assembly.GetName().Name}");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }

    /// <summary>A preset's spec (quick, default or full).</summary>
    public static StudySpec Preset(string name) => Parse(PresetText(name), $"preset {name}");

    /// <summary>Reads and checks a spec file; <see cref="ValleyException"/> naming the file and the field for a bad one.</summary>
    public static StudySpec Load(string path, string? sourceName = null)
    {
        string text;
        try { text = File.ReadAllText(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new ValleyException($"{sourceName ?? path}: cannot read: {e.Message}", e); }
        return Parse(text, sourceName ?? path);
    }

    /// <summary>
    /// Parses and checks a spec (JSON; comments and trailing commas allowed). A bad spec throws a <see cref="ValleyException"/>
    /// of one line, "<paramref name="sourceName"/>: FIELD: what is wrong" (e.g. "s.json: grid.batch_size[2]: must be a positive
    /// integer, got -3"), for unknown fields, wrong types, bad values, empty grids, duplicate model names and unknown measures
    /// or optimizers.
    /// </summary>
    public static StudySpec Parse(string json, string sourceName) => new SpecReader(sourceName).Read(json);

    /// <summary>
    /// The models of the study: the grid's products, then the listed models, named from the hyperparameters that vary. Empty
    /// for a spec without a grid or models, which only serves a model zoo (<see cref="StudyZoo"/>) with its data, measures and figures.
    /// </summary>
    public List<StudyModel> Expand() => SpecReader.Expand(this, "spec");

    /// <summary>The runner's options: every model of <see cref="Expand"/>, the stopping rule, the measures and the figures.</summary>
    public StudyOptions ToOptions() => new()
    {
        Preset = Name, Model = Model, TrainExamples = Data.TrainExamples, TestExamples = Data.TestExamples, Models = Expand(),
        StopAtLoss = Stopping.Loss, MaxEpochs = Stopping.MaxEpochs, Measures = [.. Measures.Names], MeasureExamples = Measures.Examples,
        DensityRuns = Measures.DensityRuns, DensitySteps = Measures.DensitySteps, MaxProducts = Measures.MaxProducts, TraceRelativeError = Measures.TraceError,
        Epsilons = [.. Measures.Epsilons], SharpnessRho = Measures.Rho, SharpnessSteps = Measures.Steps, SharpnessSamples = Measures.Samples,
        SlicePoints = Figures.SlicePoints, ContourPoints = Figures.ContourPoints, ParametricPoints = Figures.ParametricPoints, Seed = Seed,
    };
}

/// <summary>The data of a study: where (null: Fashion-MNIST), labels, task, loss, and how many examples.</summary>
public sealed record StudyDataSpec
{
    /// <summary>Data with a test set, as <c>--data</c> takes it; null: Fashion-MNIST.</summary>
    public string? Path { get; init; }
    /// <summary>Labels for a tensor file of inputs (as <c>--labels</c>).</summary>
    public string? Labels { get; init; }
    /// <summary>classification or regression; null: told by the data.</summary>
    public string? Task { get; init; }
    /// <summary>cross-entropy, mse or bce; null: the task's default.</summary>
    public string? Loss { get; init; }
    /// <summary>Training examples (a seeded subset; 0 = all). Default 10,000.</summary>
    public long TrainExamples { get; init; } = 10_000;
    /// <summary>Test examples (a seeded subset; 0 = all).</summary>
    public long TestExamples { get; init; }
}

/// <summary>One product of value lists: every combination is a model (ρ applies to SAM and ASAM only).</summary>
public sealed record StudyGridSpec
{
    /// <summary>Architectures; null: the spec's <see cref="StudySpec.Architectures"/> or <see cref="StudySpec.Model"/>.</summary>
    public List<string>? Architecture { get; init; }
    /// <summary>Optimizers: sgd, adam, sam, asam (SAM and ASAM with an SGD base).</summary>
    public List<string> Optimizer { get; init; } = [];
    /// <summary>Learning rates.</summary>
    public List<double> LearningRate { get; init; } = [];
    /// <summary>Batch sizes.</summary>
    public List<long> BatchSize { get; init; } = [];
    /// <summary>Weight decays; null: 0.</summary>
    public List<double>? WeightDecay { get; init; }
    /// <summary>SAM/ASAM radii; null: the optimizer's default (0.05 SAM, 0.5 ASAM).</summary>
    public List<double>? Rho { get; init; }
    /// <summary>Seeds (initialization and data order); null: 0.</summary>
    public List<long>? Seed { get; init; }
    /// <summary>Training-set sizes (nested seeded subsets of the data's training examples); null: all of them.</summary>
    public List<long>? TrainSize { get; init; }
}

/// <summary>One model listed by hand.</summary>
public sealed record StudyModelSpec
{
    /// <summary>Its name; null: generated from the hyperparameters that vary.</summary>
    public string? Name { get; init; }
    /// <summary>Its architecture; null: the spec's model (or first architecture).</summary>
    public string? Architecture { get; init; }
    /// <summary>sgd, adam, sam or asam.</summary>
    public string Optimizer { get; init; } = "";
    /// <summary>Learning rate.</summary>
    public double LearningRate { get; init; }
    /// <summary>Batch size.</summary>
    public long BatchSize { get; init; }
    /// <summary>Weight decay; null: 0.</summary>
    public double? WeightDecay { get; init; }
    /// <summary>SAM/ASAM radius; null: the optimizer's default.</summary>
    public double? Rho { get; init; }
    /// <summary>Seed; null: 0.</summary>
    public long? Seed { get; init; }
    /// <summary>Training-set size; null: all the training examples.</summary>
    public long? TrainSize { get; init; }
}

/// <summary>The stopping rule: the common training loss every model is trained to, or the epoch cap.</summary>
public sealed record StudyStoppingSpec
{
    /// <summary>Stop when the full training loss falls below this. Default 0.2.</summary>
    public double Loss { get; init; } = 0.2;
    /// <summary>Stop after this many epochs whatever the loss. Default 200.</summary>
    public int MaxEpochs { get; init; } = 200;
}

/// <summary>Which measures run on every model, with their settings and the examples they use.</summary>
public sealed record StudyMeasuresSpec
{
    /// <summary>lambda_max, top5_sum, trace, negative_mass and names of <see cref="SharpnessMeasures"/>. Default <see cref="StudyOptions.DefaultMeasures"/>.</summary>
    public List<string> Names { get; init; } = [.. StudyOptions.DefaultMeasures];
    /// <summary>Training examples the measures use (a seeded subset of each model's training set). Default 2048.</summary>
    public long Examples { get; init; } = 2048;
    /// <summary>Hessian-vector products per estimator (top-5 Lanczos, XTrace trace). Default 400.</summary>
    public long MaxProducts { get; init; } = 400;
    /// <summary>Relative standard error the trace stops at. Default 0.05.</summary>
    public double TraceError { get; init; } = 0.05;
    /// <summary>SLQ runs of the density (negative_mass). Default 5.</summary>
    public int DensityRuns { get; init; } = 5;
    /// <summary>SLQ Lanczos steps per run. Default 50.</summary>
    public int DensitySteps { get; init; } = 50;
    /// <summary>Keskar ε values. Default 1e-3, 5e-4.</summary>
    public List<double> Epsilons { get; init; } = [1e-3, 5e-4];
    /// <summary>ρ of SAM, worst-case and average-case sharpness; null: each measure's default.</summary>
    public double? Rho { get; init; }
    /// <summary>Ascent steps; null: each measure's default.</summary>
    public int? Steps { get; init; }
    /// <summary>Monte-Carlo samples; null: each measure's default.</summary>
    public int? Samples { get; init; }
}

/// <summary>Resolution of the report's figures.</summary>
public sealed record StudyFiguresSpec
{
    /// <summary>Points of every model's 1D slice. Default 21.</summary>
    public int SlicePoints { get; init; } = 21;
    /// <summary>Points per axis of the 2D contours. Default 21.</summary>
    public int ContourPoints { get; init; } = 21;
    /// <summary>Points of Keskar's parametric plot. Default 31.</summary>
    public int ParametricPoints { get; init; } = 31;
}

/// <summary>Reads a spec from JSON, field by field, so that every error names its field.</summary>
internal sealed class SpecReader(string source)
{
    static readonly string[] Optimizers = ["sgd", "adam", "sam", "asam"];
    static readonly string[] Tasks = ["classification", "regression"];

    ValleyException Fail(string path, string message) => new($"{source}: {path}: {message}");

    static string Show(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.String => JsonSerializer.Serialize(e.GetString()),
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "a list",
        _ => e.GetRawText(),
    };

    public StudySpec Read(string json)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(json, new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true }); }
        catch (JsonException e) { throw new ValleyException($"{source}: not valid JSON (line {e.LineNumber + 1}, position {e.BytePositionInLine + 1})", e); }
        using (doc)
        {
            var root = doc.RootElement;
            Object(root, "the spec", "name", "data", "model", "architectures", "grid", "models", "stopping", "measures", "figures", "seed");
            var spec = new StudySpec();
            if (Get(root, "name") is { } name) spec = spec with { Name = Text(name, "name") };
            if (Get(root, "seed") is { } seed) spec = spec with { Seed = Integer(seed, "seed", 0, "a non-negative integer") };
            if (Get(root, "data") is { } data) spec = spec with { Data = ReadData(data) };
            if (Get(root, "model") is { } model) spec = spec with { Model = Architecture(model, "model") };
            if (Get(root, "architectures") is { } archs) spec = spec with { Architectures = List(archs, "architectures", Architecture, scalar: false) };
            if (Get(root, "grid") is { } grid)
            {
                if (grid.ValueKind == JsonValueKind.Object) spec = spec with { Grid = [ReadGrid(grid, "grid")] };
                else if (grid.ValueKind == JsonValueKind.Array)
                {
                    if (grid.GetArrayLength() == 0) throw Fail("grid", "is empty (give at least one product of value lists, or list models under \"models\")");
                    spec = spec with { Grid = grid.EnumerateArray().Select((g, i) => ReadGrid(g, $"grid[{i}]")).ToList() };
                }
                else throw Fail("grid", $"must be an object of value lists or a list of them, got {Show(grid)}");
            }
            if (Get(root, "models") is { } models)
            {
                if (models.ValueKind != JsonValueKind.Array) throw Fail("models", $"must be a list of models, got {Show(models)}");
                spec = spec with { Models = models.EnumerateArray().Select((m, i) => ReadModel(m, $"models[{i}]")).ToList() };
            }
            if (Get(root, "stopping") is { } stopping)
            {
                Object(stopping, "stopping", "loss", "max_epochs");
                var s = new StudyStoppingSpec();
                if (Get(stopping, "loss") is { } l) s = s with { Loss = Positive(l, "stopping.loss") };
                if (Get(stopping, "max_epochs") is { } me) s = s with { MaxEpochs = (int)Integer(me, "stopping.max_epochs", 1, "a positive integer", int.MaxValue) };
                spec = spec with { Stopping = s };
            }
            if (Get(root, "measures") is { } measures) spec = spec with { Measures = ReadMeasures(measures) };
            if (Get(root, "figures") is { } figures)
            {
                Object(figures, "figures", "slice_points", "contour_points", "parametric_points");
                var f = new StudyFiguresSpec();
                if (Get(figures, "slice_points") is { } sp) f = f with { SlicePoints = (int)Integer(sp, "figures.slice_points", 2, "an integer of at least 2", 10_000) };
                if (Get(figures, "contour_points") is { } cp) f = f with { ContourPoints = (int)Integer(cp, "figures.contour_points", 2, "an integer of at least 2", 1_000) };
                if (Get(figures, "parametric_points") is { } pp) f = f with { ParametricPoints = (int)Integer(pp, "figures.parametric_points", 2, "an integer of at least 2", 10_000) };
                spec = spec with { Figures = f };
            }
            if (spec.Data.TrainExamples > 0)
            {
                for (int g = 0; g < spec.Grid.Count; g++)
                    for (int i = 0; i < (spec.Grid[g].TrainSize?.Count ?? 0); i++)
                        if (spec.Grid[g].TrainSize![i] > spec.Data.TrainExamples)
                            throw Fail($"{GridPath(spec, g)}.train_size[{i}]", $"{spec.Grid[g].TrainSize![i]} is more than data.train_examples ({spec.Data.TrainExamples})");
                for (int i = 0; i < spec.Models.Count; i++)
                    if (spec.Models[i].TrainSize > spec.Data.TrainExamples)
                        throw Fail($"models[{i}].train_size", $"{spec.Models[i].TrainSize} is more than data.train_examples ({spec.Data.TrainExamples})");
            }
            // A spec without a grid or models only serves a model zoo (its data, measures and figures); the runner refuses it otherwise.
            var expanded = Expand(spec, source);
            if (expanded.Count is 1) throw Fail(spec.Grid.Count > 0 ? "grid" : "models", $"gives {expanded.Count} model; a study needs at least two");
            return spec;
        }
    }

    static string GridPath(StudySpec spec, int g) => spec.Grid.Count == 1 ? "grid" : $"grid[{g}]";

    StudyDataSpec ReadData(JsonElement e)
    {
        Object(e, "data", "path", "labels", "task", "loss", "train_examples", "test_examples");
        var d = new StudyDataSpec();
        if (Get(e, "path") is { } p) d = d with { Path = OptionalText(p, "data.path") };
        if (Get(e, "labels") is { } l) d = d with { Labels = OptionalText(l, "data.labels") };
        if (Get(e, "task") is { } t) d = d with { Task = OneOf(t, "data.task", Tasks, nullable: true) };
        if (Get(e, "loss") is { } loss) d = d with { Loss = OneOf(loss, "data.loss", [.. Valley.Curvature.Losses.Names], nullable: true) };
        if (Get(e, "train_examples") is { } n) d = d with { TrainExamples = Integer(n, "data.train_examples", 0, "a non-negative integer (0 = all)") };
        if (Get(e, "test_examples") is { } m) d = d with { TestExamples = Integer(m, "data.test_examples", 0, "a non-negative integer (0 = all)") };
        return d;
    }

    StudyGridSpec ReadGrid(JsonElement e, string path)
    {
        Object(e, path, "architecture", "optimizer", "learning_rate", "batch_size", "weight_decay", "rho", "seed", "train_size");
        var g = new StudyGridSpec
        {
            Optimizer = Distinct(List(Required(e, "optimizer", path), $"{path}.optimizer", (x, p) => OneOf(x, p, Optimizers, nullable: false)!), $"{path}.optimizer"),
            LearningRate = Distinct(List(Required(e, "learning_rate", path), $"{path}.learning_rate", Positive), $"{path}.learning_rate"),
            BatchSize = Distinct(List(Required(e, "batch_size", path), $"{path}.batch_size", (x, p) => Integer(x, p, 1, "a positive integer")), $"{path}.batch_size"),
        };
        if (Get(e, "architecture") is { } a) g = g with { Architecture = Distinct(List(a, $"{path}.architecture", Architecture), $"{path}.architecture") };
        if (Get(e, "weight_decay") is { } wd) g = g with { WeightDecay = Distinct(List(wd, $"{path}.weight_decay", NonNegative), $"{path}.weight_decay") };
        if (Get(e, "rho") is { } rho) g = g with { Rho = Distinct(List(rho, $"{path}.rho", Positive), $"{path}.rho") };
        if (Get(e, "seed") is { } s) g = g with { Seed = Distinct(List(s, $"{path}.seed", (x, p) => Integer(x, p, 0, "a non-negative integer")), $"{path}.seed") };
        if (Get(e, "train_size") is { } ts) g = g with { TrainSize = Distinct(List(ts, $"{path}.train_size", (x, p) => Integer(x, p, 1, "a positive integer")), $"{path}.train_size") };
        return g;
    }

    StudyModelSpec ReadModel(JsonElement e, string path)
    {
        Object(e, path, "name", "architecture", "optimizer", "learning_rate", "batch_size", "weight_decay", "rho", "seed", "train_size");
        var m = new StudyModelSpec
        {
            Optimizer = OneOf(Required(e, "optimizer", path), $"{path}.optimizer", Optimizers, nullable: false)!,
            LearningRate = Positive(Required(e, "learning_rate", path), $"{path}.learning_rate"),
            BatchSize = Integer(Required(e, "batch_size", path), $"{path}.batch_size", 1, "a positive integer"),
        };
        if (Get(e, "name") is { } n)
        {
            var name = Text(n, $"{path}.name");
            if (!IsSafeName(name)) throw Fail($"{path}.name", $"must use letters, digits, '.', '_' and '-' only (it names a folder), got {JsonSerializer.Serialize(name)}");
            m = m with { Name = name };
        }
        if (Get(e, "architecture") is { } a) m = m with { Architecture = Architecture(a, $"{path}.architecture") };
        if (Get(e, "weight_decay") is { } wd) m = m with { WeightDecay = NonNegative(wd, $"{path}.weight_decay") };
        if (Get(e, "rho") is { } rho) m = m with { Rho = Positive(rho, $"{path}.rho") };
        if (Get(e, "seed") is { } s) m = m with { Seed = Integer(s, $"{path}.seed", 0, "a non-negative integer") };
        if (Get(e, "train_size") is { } ts) m = m with { TrainSize = Integer(ts, $"{path}.train_size", 1, "a positive integer") };
        return m;
    }

    StudyMeasuresSpec ReadMeasures(JsonElement e)
    {
        Object(e, "measures", "names", "examples", "max_products", "trace_error", "density_runs", "density_steps", "epsilons", "rho", "steps", "samples");
        var m = new StudyMeasuresSpec();
        var known = StudyOptions.CurvatureMeasures.Concat(SharpnessMeasures.All.Select(x => x.Name)).ToArray();
        if (Get(e, "names") is { } names)
            m = m with
            {
                Names = Distinct(List(names, "measures.names", (x, p) => OneOf(x, p, known, nullable: false, what: "measure")!), "measures.names"),
            };
        if (Get(e, "examples") is { } ex) m = m with { Examples = Integer(ex, "measures.examples", 1, "a positive integer") };
        if (Get(e, "max_products") is { } mp) m = m with { MaxProducts = Integer(mp, "measures.max_products", 20, "an integer of at least 20 (Lanczos for 5 eigenvalues needs 11, XTrace starts with 20)") };
        if (Get(e, "trace_error") is { } te)
        {
            double v = Number(te, "measures.trace_error");
            if (!(v > 0 && v < 1)) throw Fail("measures.trace_error", $"must be in (0, 1), got {Show(te)}");
            m = m with { TraceError = v };
        }
        if (Get(e, "density_runs") is { } dr) m = m with { DensityRuns = (int)Integer(dr, "measures.density_runs", 1, "a positive integer", 10_000) };
        if (Get(e, "density_steps") is { } ds) m = m with { DensitySteps = (int)Integer(ds, "measures.density_steps", 2, "an integer of at least 2", 100_000) };
        if (Get(e, "epsilons") is { } eps) m = m with { Epsilons = Distinct(List(eps, "measures.epsilons", Positive), "measures.epsilons") };
        if (Get(e, "rho") is { } rho) m = m with { Rho = Positive(rho, "measures.rho") };
        if (Get(e, "steps") is { } st) m = m with { Steps = (int)Integer(st, "measures.steps", 1, "a positive integer", int.MaxValue) };
        if (Get(e, "samples") is { } sa) m = m with { Samples = (int)Integer(sa, "measures.samples", 1, "a positive integer", int.MaxValue) };
        return m;
    }

    void Object(JsonElement e, string path, params string[] known)
    {
        if (e.ValueKind != JsonValueKind.Object) throw Fail(path, $"must be an object, got {Show(e)}");
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var p in e.EnumerateObject())
        {
            string field = path == "the spec" ? p.Name : $"{path}.{p.Name}";
            if (!known.Contains(p.Name)) throw Fail(field, $"unknown field (known: {string.Join(", ", known)})");
            if (!seen.Add(p.Name)) throw Fail(field, "given twice");
        }
    }

    static JsonElement? Get(JsonElement e, string name) => e.TryGetProperty(name, out var v) ? v : null;

    JsonElement Required(JsonElement e, string name, string path) =>
        Get(e, name) is { } v && v.ValueKind != JsonValueKind.Null ? v : throw Fail($"{path}.{name}", "missing (required)");

    string Text(JsonElement e, string path)
    {
        if (e.ValueKind != JsonValueKind.String) throw Fail(path, $"must be a string, got {Show(e)}");
        var s = e.GetString()!;
        if (string.IsNullOrWhiteSpace(s)) throw Fail(path, "must not be empty");
        return s;
    }

    string? OptionalText(JsonElement e, string path) => e.ValueKind == JsonValueKind.Null ? null : Text(e, path);

    string? OneOf(JsonElement e, string path, string[] allowed, bool nullable, string what = "")
    {
        if (nullable && e.ValueKind == JsonValueKind.Null) return null;
        if (e.ValueKind != JsonValueKind.String) throw Fail(path, $"must be a string, got {Show(e)}");
        var s = e.GetString()!;
        if (!allowed.Contains(s)) throw Fail(path, $"unknown {(what == "" ? "value" : what)} {JsonSerializer.Serialize(s)} (known: {string.Join(", ", allowed)})");
        return s;
    }

    string Architecture(JsonElement e, string path)
    {
        var s = Text(e, path);
        try { new Models.ModelSource(s).Validate(); }
        catch (ValleyException x) { throw Fail(path, x.Message.Replace("--model ", "", StringComparison.Ordinal)); }
        return s;
    }

    double Number(JsonElement e, string path)
    {
        if (e.ValueKind != JsonValueKind.Number || !e.TryGetDouble(out var v) || !double.IsFinite(v)) throw Fail(path, $"must be a number, got {Show(e)}");
        return v;
    }

    double Positive(JsonElement e, string path)
    {
        if (e.ValueKind == JsonValueKind.Number && e.TryGetDouble(out var v) && double.IsFinite(v) && v > 0) return v;
        throw Fail(path, $"must be a positive number, got {Show(e)}");
    }

    double NonNegative(JsonElement e, string path)
    {
        if (e.ValueKind == JsonValueKind.Number && e.TryGetDouble(out var v) && double.IsFinite(v) && v >= 0) return v;
        throw Fail(path, $"must be a non-negative number, got {Show(e)}");
    }

    long Integer(JsonElement e, string path, long min, string what, long max = long.MaxValue)
    {
        if (e.ValueKind == JsonValueKind.Number && e.TryGetInt64(out var v) && v >= min && v <= max) return v;
        throw Fail(path, $"must be {what}, got {Show(e)}");
    }

    /// <summary>A list of values, or (with <paramref name="scalar"/>) one value standing for a list of one.</summary>
    List<T> List<T>(JsonElement e, string path, Func<JsonElement, string, T> item, bool scalar = true)
    {
        if (e.ValueKind != JsonValueKind.Array)
        {
            if (scalar && e.ValueKind != JsonValueKind.Object && e.ValueKind != JsonValueKind.Null) return [item(e, path)];
            throw Fail(path, $"must be a list{(scalar ? " (or one value)" : "")}, got {Show(e)}");
        }
        if (e.GetArrayLength() == 0) throw Fail(path, "is empty (give at least one value)");
        return e.EnumerateArray().Select((x, i) => item(x, $"{path}[{i}]")).ToList();
    }

    List<T> Distinct<T>(List<T> values, string path)
    {
        for (int i = 0; i < values.Count; i++)
            for (int j = 0; j < i; j++)
                if (EqualityComparer<T>.Default.Equals(values[i], values[j])) throw Fail($"{path}[{i}]", $"repeats {path}[{j}] ({values[i]})");
        return values;
    }

    internal static bool IsSafeName(string s) => s.Length > 0 && s != "." && s != ".." && s.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-');

    /// <summary>A file-name-safe short form of an architecture: "mlp:784-64-10" → "mlp784-64-10", an archive → its file name.</summary>
    static string ArchitecturePart(string a)
    {
        var s = new Models.ModelSource(a).IsFile ? System.IO.Path.GetFileNameWithoutExtension(a) : a.Replace(":", "", StringComparison.Ordinal);
        return new string(s.Select(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '-' ? c : '_').ToArray());
    }

    static bool IsSam(string optimizer) => optimizer is "sam" or "asam";

    /// <summary>The spec's models, named, with their varied hyperparameters; duplicate names are refused naming the field.</summary>
    internal static List<StudyModel> Expand(StudySpec spec, string source)
    {
        var reader = new SpecReader(source);
        string F(double v) => StudyModel.Format(v);
        var defaultArchs = spec.Architectures ?? [spec.Model];
        // (field path, model) in order: each product's combinations (seed innermost), then the listed models.
        var raw = new List<(string Path, StudyModel Model, bool Named)>();
        for (int g = 0; g < spec.Grid.Count; g++)
        {
            var grid = spec.Grid[g];
            string path = GridPath(spec, g);
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var arch in grid.Architecture ?? defaultArchs)
            foreach (var n in grid.TrainSize?.Select(v => (long?)v) ?? [null])
            foreach (var opt in grid.Optimizer)
            foreach (var lr in grid.LearningRate)
            foreach (var b in grid.BatchSize)
            foreach (var wd in grid.WeightDecay ?? [0])
            // ρ belongs to SAM and ASAM only: the other optimizers' combinations with each ρ are one model.
            foreach (var rho in IsSam(opt) ? grid.Rho?.Select(v => (double?)v) ?? [null] : [null])
            foreach (var seed in grid.Seed ?? [0])
            {
                var m = new StudyModel("", opt, b, lr, seed, rho) { Architecture = arch, WeightDecay = wd, TrainExamples = n };
                if (seen.Add(string.Join("|", m.Settings().OrderBy(kv => kv.Key).Select(kv => $"{kv.Key}={kv.Value}")))) raw.Add((path, m, false));
            }
        }
        for (int i = 0; i < spec.Models.Count; i++)
        {
            var x = spec.Models[i];
            raw.Add(($"models[{i}]", new StudyModel(x.Name ?? "", x.Optimizer, x.BatchSize, x.LearningRate, x.Seed ?? 0, IsSam(x.Optimizer) ? x.Rho : null)
            {
                Architecture = x.Architecture ?? defaultArchs[0], WeightDecay = x.WeightDecay ?? 0, TrainExamples = x.TrainSize,
            }, x.Name is not null));
        }
        var models = raw.Select(r => r.Model).ToList();
        double EffectiveRho(StudyModel m) => m.Rho ?? (m.Optimizer == "asam" ? 0.5 : 0.05);
        long TrainSize(StudyModel m) => m.TrainExamples ?? spec.Data.TrainExamples;
        bool Varies<T>(IEnumerable<T> values) => values.Distinct().Count() > 1;
        bool archs = Varies(models.Select(m => m.Architecture)), wds = Varies(models.Select(m => m.WeightDecay)), sizes = Varies(models.Select(TrainSize));
        // The learning rate and ρ vary only where they vary for one optimizer: a rate or radius that comes with the optimizer
        // (Adam at 1e-3, SGD at 0.05; SAM's ρ) is part of its setting. As separate hyperparameters they would make every
        // pair of optimizers differ in two hyperparameters, and the granulated τ would find no group that varies the optimizer.
        bool lrs = models.GroupBy(m => m.Optimizer).Any(g => Varies(g.Select(m => m.LearningRate)));
        bool rhos = models.Where(m => IsSam(m.Optimizer)).GroupBy(m => m.Optimizer).Any(g => Varies(g.Select(EffectiveRho)));
        var result = new List<StudyModel>();
        var names = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (path, m, named) in raw)
        {
            var h = new Dictionary<string, string>();
            var parts = new List<string>();
            if (archs) { h["architecture"] = m.Architecture!; parts.Add(ArchitecturePart(m.Architecture!)); }
            if (sizes) { h["train_size"] = TrainSize(m).ToString(CultureInfo.InvariantCulture); parts.Add($"n{TrainSize(m)}"); }
            h["optimizer"] = m.Optimizer;
            parts.Add(m.Optimizer);
            if (lrs) { h["lr"] = F(m.LearningRate); parts.Add($"lr{F(m.LearningRate)}"); }
            h["batch_size"] = F(m.BatchSize);
            parts.Add($"b{m.BatchSize}");
            if (wds) { h["weight_decay"] = F(m.WeightDecay); parts.Add($"wd{F(m.WeightDecay)}"); }
            // Without SAM the perturbation radius is 0: the base optimizer is SAM at ρ = 0.
            if (rhos) { h["rho"] = IsSam(m.Optimizer) ? F(EffectiveRho(m)) : "0"; if (IsSam(m.Optimizer)) parts.Add($"rho{F(EffectiveRho(m))}"); }
            h["seed"] = F(m.Seed);
            parts.Add($"s{m.Seed}");
            var name = named ? m.Name : string.Join("-", parts);
            if (names.TryGetValue(name, out var earlier))
                throw reader.Fail(named ? $"{path}.name" : path, $"duplicate model name '{name}' (also from {earlier}); give the models different settings or names");
            names[name] = path;
            result.Add(m with { Name = name, Hyperparameters = h });
        }
        return result;
    }
}
