namespace Valley.Training;

/// <summary>Learning-rate schedules, applied to the base optimizer: a pure function of progress, so a resumed run gets the same rates.</summary>
public enum Schedule
{
    /// <summary>η₀ throughout.</summary>
    Constant,
    /// <summary>×0.1 at 50% and again at 75% of training.</summary>
    Step,
    /// <summary>Cosine annealing to zero (Loshchilov and Hutter 2017): η_t = η₀ · ½ (1 + cos(π t / T)).</summary>
    Cosine,
}

/// <summary>The learning rate of a <see cref="Schedule"/> at a point of training.</summary>
public static class Schedules
{
    /// <summary>The learning rate at progress t ∈ [0, 1].</summary>
    public static double At(Schedule s, double lr0, double t) => s switch
    {
        Schedule.Constant => lr0,
        Schedule.Step => lr0 * (t >= 0.75 ? 0.01 : t >= 0.5 ? 0.1 : 1),
        _ => lr0 * 0.5 * (1 + Math.Cos(Math.PI * Math.Clamp(t, 0, 1))),
    };
}
