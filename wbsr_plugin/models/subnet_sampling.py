"""Which subnet(s) of the supernet train at each iteration."""
import torch

SAMPLING_RULES = ('uniform', 'sandwich', 'cost_weighted')


class SubnetSampler:
    """Draws the subnets trained at one iteration.

    Rules:
        uniform: one subnet, uniformly at random.
        sandwich: the largest and the smallest subnet plus one random other (the "sandwich
            rule" of slimmable/BigNAS training); the full network is updated every iteration.
        cost_weighted: one subnet with probability proportional to its FLOPs (ARM's
            cost-aware choice: expensive subnets, which serve the hard patches, train more).

    The generator is seeded identically on every rank, so DDP ranks train the same subnets,
    and its state is part of the training state, so a resumed run draws what the uninterrupted
    run would have drawn.

    Args:
        subnets (list[Subnet]): The supernet's subnets ordered by cost.
        rule (str): One of ``SAMPLING_RULES``. Default: 'sandwich'.
        seed (int): Seed of the sampler's own generator. Default: 0.
    """

    def __init__(self, subnets, rule='sandwich', seed=0):
        if rule not in SAMPLING_RULES:
            raise ValueError(f'wbsr.subnet_sampling must be one of {list(SAMPLING_RULES)}, got {rule!r}.')
        self.num_subnets = len(subnets)
        self.rule = rule
        costs = torch.tensor([float(s.flops) for s in subnets], dtype=torch.float64)
        self.cost_weights = costs / costs.sum()
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self):
        """Indices (in cost order) of the subnets to train at this iteration."""
        if self.rule == 'uniform':
            return [int(torch.randint(self.num_subnets, (1, ), generator=self.generator))]
        elif self.rule == 'cost_weighted':
            return [int(torch.multinomial(self.cost_weights, 1, generator=self.generator))]
        elif self.rule == 'sandwich':
            largest, smallest = self.num_subnets - 1, 0
            if self.num_subnets <= 2:
                return sorted({largest, smallest}, reverse=True)
            middle = 1 + int(torch.randint(self.num_subnets - 2, (1, ), generator=self.generator))
            return [largest, smallest, middle]
        else:
            raise ValueError(f'unknown subnet sampling rule {self.rule!r}')

    def state_dict(self):
        return {'rule': self.rule, 'generator': self.generator.get_state()}

    def load_state_dict(self, state):
        if state['rule'] != self.rule:
            raise ValueError(f"the training state was saved with wbsr.subnet_sampling={state['rule']!r}, "
                             f'the options say {self.rule!r}.')
        self.generator.set_state(state['generator'])
